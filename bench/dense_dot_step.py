"""The train step with dense_dot's CPU weight gradient against autodiff's.

w2s_jax/models/dense_dot.py computes every projection's dW as
(dy^T x)^T on CPU, the tokens flattened into one dimension. This builds
the same packed train step three times per model and alternates them in
one process, `--rounds` rounds of `--steps` steps, so all see the same
machine load:
  lax        nn.Dense's own lax.dot_general, differentiated by JAX: the
             code before dense_dot;
  vjp x^T dy dense_dot's custom_vjp with its other-platform form (x^T dy
             over the (rows, length) dimensions) on CPU too;
  dense_dot  as committed.
Each is swapped in while its step is traced. Losses are printed to show
the programs compute the same thing.

  OMP_NUM_THREADS=1 taskset -c 0 python bench/dense_dot_step.py
  ... --models minilm-l6,minilm-l3 --rows 8,7 --rounds 8
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import packing as packing_bench  # bench/packing.py

BATCH, LENGTH = packing_bench.BATCH, packing_bench.MAX_CTX


def build(name: str, rows: int, form: str):
    from jax import lax
    from w2s_jax.core import sharding
    from w2s_jax.data import packing
    from w2s_jax.models import dense_dot
    from w2s_jax.train import losses, steps

    # A normal head and one-hot targets, so the backbone's gradients are
    # not zero at the first step.
    mesh, module, params, ids, settings = packing_bench.step_parts(
        name, minibatch=rows, lr=1e-4, head_init="normal")
    rng = np.random.default_rng(1)
    tx = steps.make_optimizer(settings)
    inputs = packing.pack(ids, np.arange(BATCH), rows=rows, length=LENGTH,
                          pad_id=0)
    targets = np.eye(2, dtype=np.float32)[rng.integers(0, 2, BATCH)]
    step = steps.make_train_step(steps.module_forward(module), tx,
                                 losses.get_loss("xent"), {}, mesh,
                                 param_shardings=sharding.shardings_of(params))
    batch = sharding.to_global(mesh, {"inputs": tuple(x[None] for x in inputs),
                                      "targets": targets[None]}, 1)
    state = steps.init_state(tx, params, mesh, total_steps=100)
    # Module attributes read while tracing, so only this program sees them.
    saved = dense_dot.dot_general, dense_dot._weight_grad_cpu
    if form == "lax":
        dense_dot.dot_general = lax.dot_general
    elif form == "vjp x^T dy":
        dense_dot._weight_grad_cpu = dense_dot._weight_grad
    try:
        compiled = step.lower(state, batch).compile()
    finally:
        dense_dot.dot_general, dense_dot._weight_grad_cpu = saved
    return [compiled, state, batch]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm-l6,minilm-l3")
    p.add_argument("--rows", default="8", help="rows of 64 tokens a step")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="steps a round")
    args = p.parse_args()
    from w2s_jax.core import host_memory
    host_memory.keep_freed_memory()  # no page faults in either (RESULTS 6c)
    forms = ("lax", "vjp x^T dy", "dense_dot")
    print("| model | rows x 64 | lax (ms) | vjp x^T dy (ms) | dense_dot (ms) "
          "| dense_dot vs lax | losses after 3 steps |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in args.models.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            runs = {form: build(name, rows, form) for form in forms}
            if len({run[0].as_text() for run in runs.values()}) < len(forms):
                raise SystemExit("two forms compiled to the same program")
            loss = {}
            for form, run in runs.items():
                for _ in range(3):
                    run[1], metrics = run[0](run[1], run[2])
                loss[form] = float(metrics["loss"])
            times = {form: [] for form in runs}
            for _ in range(args.rounds):
                for form, run in runs.items():
                    started = time.perf_counter()
                    for _ in range(args.steps):
                        run[1], metrics = run[0](run[1], run[2])
                    float(metrics["loss"])
                    times[form].append((time.perf_counter() - started) / args.steps)
            ms = [1000 * np.median(times[f]) for f in forms]
            print(f"| {name} | {rows} | " + " | ".join(f"{t:.1f}" for t in ms)
                  + f" | {ms[2] / ms[0] - 1:+.1%} | "
                  + " / ".join(f"{loss[f]:.6f}" for f in forms) + " |", flush=True)


if __name__ == "__main__":
    main()
