"""Train-step time and per-device memory of one GPT-2 per mesh layout.

Runs on 8 virtual CPU devices (jax_num_cpu_devices, set before anything
else touches jax), with the trainer's own pieces: steps.build_classifier,
init_params (params created in their logical-rule shardings),
init_state, make_train_step(param_shardings=...), sharding.make_mesh.

Per layout it prints
  - median step time over --steps steps after one warmup step; on virtual
    CPU devices all 8 "devices" share this machine's cores and collectives
    are memory copies, so this measures the layout's extra work (redundant
    compute, resharding copies, collectives' copies), NOT multi-chip
    scaling;
  - compiled.memory_analysis() of the step, which XLA reports for ONE
    device's partition: arguments, outputs, aliased (donated) bytes, temps,
    and peak ~ arguments + outputs - aliased + temps;
  - the train state (params + Adam moments) actually resident per device:
    the max over devices of the bytes of its addressable shards.
jax's CPU devices have no memory_stats() (None), so there is no live
allocator peak to report.

  python bench/mesh_layouts.py
"""
import jax

# Must precede any use of jax's backend (and any w2s_jax import).
jax.config.update("jax_num_cpu_devices", 8)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from w2s_jax.core import sharding  # noqa: E402
from w2s_jax.train import losses, steps  # noqa: E402
from w2s_jax.models import registry  # noqa: E402

LAYOUTS = (
    ("1 device", {"data": 1}, 1),
    ("data=8", {"data": 8}, 8),
    ("data=2,fsdp=4", {"data": 2, "fsdp": 4}, 8),
    ("data=2,fsdp=2,tensor=2", {"data": 2, "fsdp": 2, "tensor": 2}, 8),
)
MiB = 2 ** 20


def build(args):
    hf = {"model_type": "gpt2", "vocab_size": args.vocab, "n_positions": 1024,
          "n_embd": args.d, "n_layer": args.layers, "n_head": args.heads}
    model = registry.ResolvedModel(
        name="bench-gpt2", family="gpt2",
        backbone_config=registry.FAMILIES["gpt2"].config_from_hf(hf),
        tokenizer=None, default_lr=1e-4, default_minibatch_size=None,
        checkpoint_dir=None, source={"kind": "random_init"})
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal", remat=args.remat)
    return model, module


def run_layout(label, axes, n_devices, args, model, module, batch_np):
    mesh = sharding.make_mesh(axes, devices=jax.devices()[:n_devices])
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh)
    settings = steps.TrainSettings(
        lr=1e-4, head_lr=None, batch_size=args.batch,
        minibatch_size=args.batch, epochs=1, lr_schedule="constant",
        warmup_steps=0, weight_decay=0.0, eval_batch_size=args.batch,
        max_ctx=args.seq, log_every=1)
    tx = steps.make_optimizer(settings)
    step = steps.make_train_step(
        steps.module_forward(module), tx, losses.get_loss("xent"), {},
        mesh, param_shardings=sharding.shardings_of(params))
    state = steps.init_state(tx, params, mesh, total_steps=10 ** 6)
    batch = sharding.to_global(mesh, batch_np, 1)

    # Resident train state per device, before the step donates it.
    per_device = {}
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            per_device[shard.device] = (per_device.get(shard.device, 0)
                                        + shard.data.nbytes)
    state_bytes = max(per_device.values())

    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()

    times = []
    for i in range(args.steps + 1):  # the first call is warmup
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        loss = float(metrics["loss"])
        if i:
            times.append(time.perf_counter() - t0)
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    med = statistics.median(times)
    print(f"| {label} | {med * 1e3:.0f} | {min(times) * 1e3:.0f} | "
          f"{args.batch / med:.1f} | {compile_s:.1f} | "
          f"{state_bytes / MiB:.1f} | {mem.argument_size_in_bytes / MiB:.1f} | "
          f"{mem.output_size_in_bytes / MiB:.1f} | "
          f"{mem.alias_size_in_bytes / MiB:.1f} | "
          f"{mem.temp_size_in_bytes / MiB:.1f} | {peak / MiB:.1f} | "
          f"{loss:.6f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=50257,
                   help="GPT-2's; odd, so tensor=2 leaves it replicated")
    p.add_argument("--batch", type=int, default=16,
                   help="must divide by data x fsdp of every layout (8)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    p.add_argument("--layouts", default="all",
                   help="comma list of layout indices 0-3, or all")
    args = p.parse_args()

    model, module = build(args)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, (1, args.batch, args.seq)).astype(np.int32)
    # Identical data for every layout: the losses in the table must agree.
    batch_np = {"inputs": (ids, np.ones_like(ids)),
                "targets": np.eye(2, dtype=np.float32)[
                    rng.integers(0, 2, (1, args.batch))]}
    n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
        lambda k: module.init(k, jnp.zeros((1, 8), jnp.int32),
                              jnp.ones((1, 8), jnp.int32))["params"],
        jax.random.key(0))))
    print(f"GPT-2 {args.layers} layers, d={args.d}, {args.heads} heads, "
          f"vocab {args.vocab}: {n_params / 1e6:.2f}M params (fp32, Adam: "
          f"state {3 * 4 * n_params / MiB:.0f} MiB unsharded); batch "
          f"{args.batch} x {args.seq}, remat {args.remat}; "
          f"{len(jax.devices())} virtual CPU devices on this host's cores; "
          f"median of {args.steps} steps after 1 warmup")
    print("\n| layout | step (ms, median) | min | examples/s | compile (s) | "
          "state/device (MiB) | args | outputs | aliased | temps | "
          "peak est. (MiB) | loss after steps |")
    print("|---|" + "---:|" * 11)
    picked = (range(len(LAYOUTS)) if args.layouts == "all"
              else [int(i) for i in args.layouts.split(",")])
    for i in picked:
        label, axes, n = LAYOUTS[i]
        try:
            run_layout(label, axes, n, args, model, module, batch_np)
        except Exception as err:  # report the layout, keep the others
            print(f"| {label} | FAILED: {type(err).__name__}: "
                  f"{str(err).splitlines()[0][:160]} |" + " |" * 10, flush=True)


if __name__ == "__main__":
    main()
