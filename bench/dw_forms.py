"""The weight-gradient GEMM dW = X^T . dY of gpt2-small's dense layers in
the four dot_general forms, XLA:CPU GFLOP/s (bench/RESULTS.md 6d).

  TN  dot_general(X, dY, contract 0/0)     what autodiff emits
  TT  dot_general(X, dY^T, contract 0/1)   what the train step compiles to
                                           (dY copied to [out, tokens] first)
  NN  dot_general(X^T, dY, contract 1/0)   an explicitly transposed X
  NT  dot_general(X^T, dY^T, contract 1/1)
Operands are passed already in each form's layout, so only the dot is timed.

  taskset -c 1 python bench/dw_forms.py
"""
import argparse

import jax
import jax.numpy as jnp

from timing import median_time

FORMS = {"TN": ((0,), (0,), False, False), "TT": ((0,), (1,), False, True),
         "NN": ((1,), (0,), True, False), "NT": ((1,), (1,), True, True)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8 * 128)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    t, d = args.tokens, args.d
    print(f"tokens {t}; median of {args.reps}; GFLOP/s")
    print("| dW shape (in x out) | " + " | ".join(FORMS) + " |")
    print("|---|" + "---:|" * len(FORMS))
    for n_in, n_out in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)):
        x = jax.random.normal(jax.random.key(0), (t, n_in))
        dy = jax.random.normal(jax.random.key(1), (t, n_out))
        rates = []
        for lc, rc, tx, tdy in FORMS.values():
            a = jnp.array(x.T if tx else x)
            b = jnp.array(dy.T if tdy else dy)
            f = jax.jit(lambda a, b, lc=lc, rc=rc: jax.lax.dot_general(
                a, b, ((lc, rc), ((), ()))))
            sec = median_time(lambda: f(a, b).block_until_ready(), args.reps, warmup=2)
            rates.append(2 * t * n_in * n_out / sec / 1e9)
        print(f"| {n_in}x{n_out} | " + " | ".join(f"{r:.1f}" for r in rates) + " |",
              flush=True)


if __name__ == "__main__":
    main()
