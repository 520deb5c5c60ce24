"""The weight matmuls of one gpt2-small train step: XLA:CPU vs torch (BLAS).

97% of the step's model FLOPs are these GEMMs: for each of the 4 linear
layers of each block, forward Y = X W, and backward dX = dY W^T and
dW = X^T dY, with X = [B*L, in] activations. This times each (shape,
transpose) once per framework, and sums them into GEMM time per step, to
tell how much of a step-time gap is the matmul library (XLA:CPU's own dot
emitter / Eigen vs torch's MKL/oneDNN sgemm) rather than everything else.

  python bench/gemm_shapes.py [--torch-threads 1]
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from timing import median_time


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8 * 128)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    t, d = args.tokens, args.d
    linears = {"c_attn": (d, 3 * d), "attn.c_proj": (d, d),
               "c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}
    rng = np.random.default_rng(0)
    print(f"torch threads {torch.get_num_threads()}; tokens {t}, d {d}, "
          f"x{args.layers} layers; median of {args.reps}")
    print("| linear | GEMM | shape (MxK . KxN) | jax GFLOP/s | torch GFLOP/s |")
    print("|---|---|---|---:|---:|")
    totals = {"jax": 0.0, "torch": 0.0}
    for name, (n_in, n_out) in linears.items():
        x = rng.standard_normal((t, n_in), dtype=np.float32)
        w = rng.standard_normal((n_in, n_out), dtype=np.float32)
        dy = rng.standard_normal((t, n_out), dtype=np.float32)
        # Transposes as contraction dims (no materialised copy), the way
        # XLA sees them in the backward pass, and as BLAS trans flags in torch.
        cases = {
            "fwd X.W": (lambda a, b: jnp.dot(a, b), (x, w), lambda a, b: a @ b,
                        (t, n_in, n_out)),
            "dX = dY.W^T": (lambda a, b: jax.lax.dot_general(
                a, b, (((1,), (1,)), ((), ()))), (dy, w), lambda a, b: a @ b.T,
                (t, n_out, n_in)),
            "dW = X^T.dY": (lambda a, b: jax.lax.dot_general(
                a, b, (((0,), (0,)), ((), ()))), (x, dy), lambda a, b: a.T @ b,
                (n_in, t, n_out)),
        }
        for gemm, (jf, operands, tf, (m, k, n)) in cases.items():
            flops = 2 * m * k * n
            jfn = jax.jit(jf)
            ja = [jnp.asarray(o) for o in operands]
            tj = median_time(lambda: jfn(*ja).block_until_ready(), args.reps, warmup=1)
            ta = [torch.from_numpy(o) for o in operands]
            tt = median_time(lambda: tf(*ta), args.reps, warmup=1)
            totals["jax"] += tj * args.layers
            totals["torch"] += tt * args.layers
            print(f"| {name} | {gemm} | {m}x{k} . {k}x{n} | "
                  f"{flops / tj / 1e9:.1f} | {flops / tt / 1e9:.1f} |",
                  flush=True)
    print(f"\nsum over {args.layers} layers (the step's weight GEMMs): "
          f"jax {totals['jax']:.2f} s, torch {totals['torch']:.2f} s")


if __name__ == "__main__":
    main()
