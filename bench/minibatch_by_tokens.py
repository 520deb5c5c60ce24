"""One train step of a batch of 32, split into minibatches of 8 rows
against the rows `loop.minibatch_rows` gives it by tokens.

The trainer's own step (steps.make_train_step) on a pretrained classifier
(default MiniLM-L6, mean pooling, as the e2e bench's strong model), the
batch's loss the whole batch's in both: for each (loss, padded length),
both splits of the same 32 rows run alternately, after two untimed calls
each, and the medians are printed. Lengths default to the rungs
bench/e2e_vs_release.py's stages pad to at 4096 examples.

  taskset -c 1 python bench/minibatch_by_tokens.py
  taskset -c 1 python bench/minibatch_by_tokens.py --model minilm-l3 --lengths 8,16
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

BATCH = 32


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--losses", default="xent,logconf")
    p.add_argument("--lengths", default="8,16,24,32,64")
    p.add_argument("--minibatch", type=int, default=8,
                   help="rows at the longest length (the fixed split)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    from w2s_jax.core import sharding
    from w2s_jax.models import registry
    from w2s_jax.train import loop, losses, steps

    model = registry.resolve(args.model)
    mesh = sharding.make_mesh({"data": -1})
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="zeros", pooling="mean")
    params = steps.init_params(module, model, head_init="zeros", seed=0,
                               mesh=mesh)
    lengths = tuple(int(n) for n in args.lengths.split(","))
    settings = steps.TrainSettings(
        lr=5e-5, head_lr=None, batch_size=BATCH, minibatch_size=args.minibatch,
        epochs=1, lr_schedule="cosine", warmup_steps=0, weight_decay=0.0,
        eval_batch_size=64, max_ctx=max(lengths), log_every=1000)
    by_tokens = loop.minibatch_rows(settings, lengths)
    tx = steps.make_optimizer(settings)
    forward = steps.module_forward(module)
    rng = np.random.default_rng(0)
    print(f"{args.model}, batch {BATCH}, fixed minibatches of {args.minibatch} "
          f"rows; by tokens: {by_tokens}; jax {jax.__version__}")
    print("| loss | length | fixed (ms) | by tokens (ms) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for loss_name in args.losses.split(","):
        loss = losses.get_loss(loss_name)
        step = steps.make_train_step(
            forward, tx, loss, {}, mesh,
            param_shardings=sharding.shardings_of(params))
        state = steps.init_state(tx, jax.tree.map(jnp.copy, params), mesh,
                                 total_steps=1000)
        for length in lengths:
            ids = rng.integers(1000, 2000, (BATCH, length))
            targets = np.tile([[0.3, 0.7]], (BATCH, 1))

            def split(rows):
                shape = (BATCH // rows, rows)
                return {"inputs": (jnp.asarray(ids.reshape(*shape, length), jnp.int32),
                                   jnp.ones((*shape, length), jnp.int32)),
                        "targets": jnp.asarray(targets.reshape(*shape, 2), jnp.float32)}
            batches = (split(args.minibatch), split(by_tokens[length]))
            times = ([], [])
            for rep in range(2 + args.reps):
                for batch, spent in zip(batches, times):
                    start = time.perf_counter()
                    state, out = step(state, batch)
                    jax.block_until_ready(out)
                    if rep >= 2:
                        spent.append(time.perf_counter() - start)
            fixed, tokens = (statistics.median(t) for t in times)
            print(f"| {loss_name} | {length} | {fixed * 1e3:.0f} | "
                  f"{tokens * 1e3:.0f} | {tokens / fixed:.2f} |", flush=True)


if __name__ == "__main__":
    main()
