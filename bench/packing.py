"""Packed training rows (w2s_jax/data/packing.py) against padded batches.

Token slots of a stage's training batches, the trainer's 2 epochs on
halves A and B of `splits.load_task(seed, n_train)` (the e2e benchmark's
data), MiniLM's tokens:

  padded        length-grouped batches (batching.train_batches) padded to
                the lengths batching.fit_rungs fits to them: the trainer
                with --config.train.pack=False;
  packed/grouped  the same batches packed, 4 shapes;
  packed/random the default: random batches packed, 4 shapes
                (loop.PACKED_SHAPES), and with a shape per batch;
  random padded random batches padded to fitted lengths.

With --step, also the MiniLM-L6 train step (one core's worth: pin it with
taskset) on one batch of 32 examples of 9-15 tokens (390 tokens), padded to
32 x 16 and packed into 7 and 8 rows of 64, median of 7 after a compile.

  W2S_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python bench/packing.py
  OMP_NUM_THREADS=1 taskset -c 1 python bench/packing.py --seeds 0 --step
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from w2s_jax.data import batching, packing, sources, splits
from w2s_jax.models import registry
from w2s_jax.train import loop

BATCH, MINIBATCH, MAX_CTX = 32, 8, 64


def slots(lengths, batches, packed: bool, shapes: int) -> int:
    rungs = batching.fit_rungs(lengths, batches, MAX_CTX)
    if not packed:
        return sum(BATCH * batching.padded_length(int(lengths[b].max()),
                                                  MAX_CTX, rungs)
                   for b in batches)
    layouts = packing.plan(lengths, batches, row_length=max(rungs),
                           max_rows=MINIBATCH, group_sizes=[8, 16, 32],
                           quantum=1, shapes=shapes)
    return sum(len(p.groups) * p.rows * max(rungs) for p in layouts)


def slot_table(seeds, n_train):
    tokenizer = registry.resolve("minilm-l6").tokenizer
    print("| seed/half | real tokens | padded | packed/grouped | "
          "**packed/random** | packed/random, a shape per batch | "
          "random padded |")
    print("|---|" + "---:|" * 6)
    for seed in seeds:
        data = splits.load_task("sst2", data_dir=sources.resolve_data_dir(None),
                                seed=seed, n_train=n_train, n_test=256)
        tokens = batching.tokenize(tokenizer, data.train_texts, max_ctx=MAX_CTX,
                                   overlength="drop")
        lengths = tokens.lengths[~tokens.too_long]
        half = len(lengths) // 2
        for name, part in (("A", lengths[:half]), ("B", lengths[half:])):
            batches = {by_length: [
                b for epoch in range(2) for b in batching.train_batches(
                    part, batch_size=BATCH, by_length=by_length,
                    rng=np.random.default_rng([seed, epoch]))]
                for by_length in (True, False)}
            real = sum(int(part[b].sum()) for b in batches[True])
            row = [slots(part, batches[True], False, 0),
                   slots(part, batches[True], True, loop.PACKED_SHAPES),
                   slots(part, batches[False], True, loop.PACKED_SHAPES),
                   slots(part, batches[False], True, 10**6),
                   slots(part, batches[False], False, 0)]
            print(f"| {seed} {name} | {real:,} | " + " | ".join(
                f"{n:,} ({1 - real / n:.0%})" for n in row) + " |")


def step_parts(name="minilm-l6", *, minibatch=MINIBATCH, lr=1e-5,
               head_init="zeros"):
    """A MiniLM train step's pieces on one device (also for
    bench/dense_dot_step.py): mesh, module, params, 32 examples of 9-15
    random tokens (sst2's MiniLM lengths) and the settings."""
    import jax
    from w2s_jax.core import sharding
    from w2s_jax.train import steps

    model = registry.resolve(name)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init=head_init)
    params = steps.init_params(module, model, head_init=head_init, seed=0,
                               mesh=mesh)
    rng = np.random.default_rng(0)
    ids = [rng.integers(1000, 2000, n).astype(np.int32)
           for n in rng.integers(9, 16, BATCH)]
    settings = steps.TrainSettings(
        lr=lr, head_lr=None, batch_size=BATCH, minibatch_size=minibatch,
        epochs=1, lr_schedule="constant", warmup_steps=0, weight_decay=0.0,
        eval_batch_size=BATCH, max_ctx=MAX_CTX, log_every=10)
    return mesh, module, params, ids, settings


def packed_xent_step(mesh, module, params, ids, settings, rows: int):
    """(jitted xent step, its state, one batch): step_parts' 32 examples
    packed into `rows` rows of 64 tokens, one-hot random targets (for
    bench/dense_dot_step.py and bench/compact_vocab.py)."""
    from w2s_jax.core import sharding
    from w2s_jax.train import losses, steps

    tx = steps.make_optimizer(settings)
    inputs = packing.pack(ids, np.arange(BATCH), rows=rows, length=MAX_CTX,
                          pad_id=0)
    targets = np.eye(2, dtype=np.float32)[
        np.random.default_rng(1).integers(0, 2, BATCH)]
    step = steps.make_train_step(steps.module_forward(module), tx,
                                 losses.get_loss("xent"), {}, mesh,
                                 param_shardings=sharding.shardings_of(params))
    batch = sharding.to_global(mesh, {"inputs": tuple(x[None] for x in inputs),
                                      "targets": targets[None]}, 1)
    return step, steps.init_state(tx, params, mesh, total_steps=100), batch

def step_table():
    import jax
    from w2s_jax.core import sharding
    from w2s_jax.train import losses, steps

    mesh, module, params, ids, settings = step_parts()
    tx = steps.make_optimizer(settings)
    everyone = np.arange(BATCH)
    cases = {"padded 32 x 16": batching.pad(ids, everyone, rows=BATCH,
                                            max_ctx=MAX_CTX, pad_id=0,
                                            rungs=(16,))}
    for rows in (7, 8):
        cases[f"packed {rows} x 64"] = packing.pack(ids, everyone, rows=rows,
                                                    length=64, pad_id=0)
    print(f"\n{sum(map(len, ids))} tokens in {BATCH} examples\n")
    print("| loss | inputs | slots | step (ms) |")
    print("|---|---|---:|---:|")
    for loss in ("xent", "logconf"):
        loss_params = ({"alpha_max": 0.75, "warmup_frac": 0.2,
                        "schedule": "linear"} if loss == "logconf" else {})
        for name, inputs in cases.items():
            state = steps.init_state(tx, jax.tree.map(jax.numpy.copy, params),
                                     mesh, total_steps=100)
            step = steps.make_train_step(
                steps.module_forward(module), tx, losses.get_loss(loss),
                loss_params, mesh)
            batch = sharding.to_global(mesh, {
                "inputs": tuple(x[None] for x in inputs),
                "targets": np.full((1, BATCH, 2), 0.5, np.float32)}, 1)
            state, metrics = step(state, batch)  # compile
            float(metrics["loss"])
            times = []
            for _ in range(7):
                started = time.perf_counter()
                state, metrics = step(state, batch)
                float(metrics["loss"])
                times.append(time.perf_counter() - started)
            print(f"| {loss} | {name} | {inputs[0].size} | "
                  f"{1000 * np.median(times):.0f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--step", action="store_true",
                        help="also time the MiniLM-L6 train step")
    args = parser.parse_args()
    slot_table([int(s) for s in args.seeds.split(",")], args.n_train)
    if args.step:
        step_table()


if __name__ == "__main__":
    main()
