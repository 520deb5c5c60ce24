"""LoRA against full finetuning at one shape: step time and memory.

    python bench/lora_step.py [--layers 6 --width 512 --rank 16 --batch 8 --length 128]

A random GPT-2 classifier (byte vocabulary) trained with the project's own
jitted step (train/steps.py), once with every parameter training and once
with LoRA adapters on every attention and MLP projection (models/lora.py:
base frozen, optimizer state for adapters and head only). Prints the
median step time, the compiled step's memory (XLA's memory analysis:
arguments + outputs - donated + temporaries) and the estimate the stage
prints before training (train/memory.py). Figures only; nothing asserted.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from timing import median_time
from w2s_jax.core import sharding
from w2s_jax.models import gpt2, lora, registry, tokenizers
from w2s_jax.train import losses, memory, steps


def _model(layers: int, width: int) -> registry.ResolvedModel:
    config = gpt2.GPT2Config.from_hf({
        "model_type": "gpt2", "vocab_size": 256, "n_positions": 1024,
        "n_embd": width, "n_layer": layers, "n_head": width // 64,
        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"})
    return registry.ResolvedModel("bench-gpt2", "gpt2", config,
                                  tokenizers.ByteTokenizer(), 1e-4, None, None, {})


def measure(model, spec, args, mesh):
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal")
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh, lora_spec=spec)
    trainable = None if spec is None else lora.is_trainable
    settings = steps.TrainSettings(
        lr=1e-4, head_lr=None, batch_size=args.batch, minibatch_size=args.batch,
        epochs=1, lr_schedule="constant", warmup_steps=0, weight_decay=0.0,
        eval_batch_size=args.batch, max_ctx=args.length, log_every=10)
    tx = steps.make_optimizer(settings)
    state = steps.init_state(tx, params, mesh, trainable, total_steps=100)
    frozen = state.pop("frozen", None)
    step = steps.make_train_step(
        steps.module_forward(module, spec), tx, losses.get_loss("xent"), {},
        mesh, param_shardings=sharding.shardings_of(state["params"]),
        frozen_shardings=None if frozen is None else sharding.shardings_of(frozen))
    rng = np.random.default_rng(0)
    batch = {"inputs": (jnp.asarray(rng.integers(0, 256, (1, args.batch, args.length)),
                                    jnp.int32),
                        jnp.ones((1, args.batch, args.length), jnp.int32)),
             "targets": jnp.asarray(np.eye(2, dtype=np.float32)[
                 rng.integers(0, 2, (1, args.batch))])}
    extra = () if frozen is None else (frozen,)
    analysis = step.lower(state, batch, *extra).compile().memory_analysis()
    compiled = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step(holder["state"], batch, *extra)
        jax.block_until_ready(metrics["loss"])

    seconds = median_time(one_step, reps=args.reps, warmup=2)
    est = memory.estimate(params, trainable, settings=settings,
                          seq_len=args.length, model=model, mesh=mesh)
    n_train = sum(x.size for x in jax.tree.leaves(state["params"]))
    return seconds, compiled, est, n_train


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    model = _model(args.layers, args.width)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    n_params = registry.param_count(model)
    print(f"GPT-2 shape: {args.layers} layers x {args.width}, {n_params / 1e6:.1f}M "
          f"backbone parameters; batch {args.batch} x {args.length} tokens; "
          f"{jax.devices()[0].device_kind}")
    print("| run | trainable params | step (s) | compiled step memory (MB) "
          "| estimate (MB) |")
    print("|---|---|---|---|---|")
    for label, spec in (("full finetuning", None),
                        (f"LoRA rank {args.rank}", lora.LoraSpec(
                            args.rank, 2.0 * args.rank, lora.DEFAULT_TARGETS["gpt2"]))):
        seconds, compiled, est, n_train = measure(model, spec, args, mesh)
        print(f"| {label} | {n_train / 1e6:.2f}M | {seconds:.3f} | "
              f"{compiled / 1e6:.0f} | {est.total / 1e6:.0f} |")


if __name__ == "__main__":
    main()
