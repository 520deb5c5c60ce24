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

import packing as packing_bench  # bench/packing.py
import timing  # bench/timing.py


def build(name: str, rows: int, form: str):
    from jax import lax
    from w2s_jax.models import dense_dot

    # A normal head and one-hot targets, so the backbone's gradients are
    # not zero at the first step.
    step, state, batch = packing_bench.packed_xent_step(
        *packing_bench.step_parts(name, minibatch=rows, lr=1e-4,
                                  head_init="normal"), rows)
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
            seconds, loss = timing.alternate_steps(runs, args.rounds, args.steps)
            ms = [1000 * seconds[f] for f in forms]
            print(f"| {name} | {rows} | " + " | ".join(f"{t:.1f}" for t in ms)
                  + f" | {ms[2] / ms[0] - 1:+.1%} | "
                  + " / ".join(f"{loss[f]:.6f}" for f in forms) + " |", flush=True)


if __name__ == "__main__":
    main()
