"""A projection's three dots on XLA:CPU with float32 and bfloat16 operands,
GFLOP/s (bench/RESULTS.md 4m): why models/dense_dot.py asks for a float32
result from bfloat16 operands and contracts dW over two leading dimensions.

  fwd      x [rows, L, in] . W [in, out]
  dX       dy [rows, L, out] . W^T
  dW lead  x, dy contracted over (rows, L): autodiff's form
  dW flat  x, dy flattened to [tokens, in], [tokens, out], contracted over
           the tokens (dense_dot's float32 form on CPU)
  dW 1xT   the flat form with a leading 1: [1, tokens, in] (dense_dot's
           bfloat16 form for 2-D inputs)

Columns: float32 operands; bfloat16 operands with a float32 result
(`preferred_element_type`); bfloat16 operands with a bfloat16 result
(what a bfloat16 dot gives by default). MiniLM's shapes, 8 rows of 64.

  OMP_NUM_THREADS=1 taskset -c 0 python bench/bf16_dots.py
"""
import argparse

import jax
import jax.numpy as jnp
from jax import lax

from timing import median_time

F32, BF16 = jnp.float32, jnp.bfloat16


def dots(x, w, dy):
    """name -> (function of the operands, its operands)."""
    def lead(a):
        return tuple(range(a.ndim - 1))

    def flat(a):
        return a.reshape(-1, a.shape[-1])

    return {
        "fwd": (lambda a, b, t: lax.dot_general(
            a, b, (((2,), (0,)), ((), ())), preferred_element_type=t), (x, w)),
        "dX": (lambda a, b, t: lax.dot_general(
            a, b, (((2,), (1,)), ((), ())), preferred_element_type=t), (dy, w)),
        "dW lead": (lambda a, b, t: lax.dot_general(
            a, b, ((lead(a), lead(a)), ((), ())), preferred_element_type=t),
            (x, dy)),
        "dW flat": (lambda a, b, t: lax.dot_general(
            a, b, (((0,), (0,)), ((), ())), preferred_element_type=t),
            (flat(x), flat(dy))),
        "dW 1xT": (lambda a, b, t: lax.dot_general(
            a, b, (((0, 1), (0, 1)), ((), ())), preferred_element_type=t),
            (flat(x)[None], flat(dy)[None])),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()
    tokens = args.rows * args.length
    print(f"{args.rows} x {args.length} tokens; median of {args.reps}; GFLOP/s")
    print("| in x out | dot | float32 | bf16 -> f32 result | bf16 -> bf16 result |")
    print("|---|---|---:|---:|---:|")
    for n_in, n_out in ((384, 1536), (1536, 384), (384, 384)):
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (args.rows, args.length, n_in))
        w = jax.random.normal(keys[1], (n_in, n_out))
        dy = jax.random.normal(keys[2], (args.rows, args.length, n_out))
        flops = 2.0 * tokens * n_in * n_out
        for name, (fn, operands) in dots(x, w, dy).items():
            rates = []
            for dtype, result in ((F32, F32), (BF16, F32), (BF16, BF16)):
                args_ = [a.astype(dtype) for a in operands]
                step = jax.jit(lambda a, b, t=result: fn(a, b, t))
                step(*args_).block_until_ready()
                seconds = median_time(
                    lambda: step(*args_).block_until_ready(), args.reps)
                rates.append(flops / seconds / 1e9)
            print(f"| {n_in} x {n_out} | {name} | " +
                  " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
