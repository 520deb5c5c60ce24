"""The train step at float32, with a bfloat16 compute dtype, and with
float32 under a bfloat16 matmul precision (config.matmul_precision).

The packed MiniLM xent step of bench/compact_vocab.py (32 examples in rows
of 64 tokens, the compact vocabulary of the end-to-end benchmark's sst2),
compiled three ways and alternated in one process:

  float32            the default;
  compute bfloat16   config.compute_dtype="bfloat16": activations in
                     bfloat16, parameters and optimizer float32;
  matmul bfloat16    config.matmul_precision="bfloat16": a float32 model
                     whose projections' dots take bfloat16 operands and
                     sum in float32 (models/dense_dot.py).

Prints each one's median step, its ratio to float32, and the loss after 3
steps (how far the roundings move it). Also the CPU's bfloat16 features:
XLA:CPU hands bfloat16 dots to YNNPACK, which uses AMX or AVX512-BF16.

  OMP_NUM_THREADS=1 taskset -c 0 python bench/matmul_precision.py \\
      --models minilm-l6,minilm-l3 --rounds 8
"""
from __future__ import annotations

import compact_vocab  # bench/compact_vocab.py
import timing  # bench/timing.py

FORMS = {  # name: (compute dtype, matmul precision)
    "float32": ("float32", None),
    "compute bfloat16": ("bfloat16", None),
    "matmul bfloat16": ("float32", "bfloat16"),
}


def cpu_bfloat16_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = sorted(f for f in flags if f.startswith("amx") or f == "avx512_bf16")
    return ", ".join(found) or "none"


def main():
    args = compact_vocab.step_args(__doc__)
    import jax

    print(f"CPU bfloat16 features: {cpu_bfloat16_flags()}\n")
    print("| model | form | step (ms) | vs float32 | loss after 3 steps |")
    print("|---|---|---:|---:|---|")
    for name in args.models.split(","):
        runs = {}
        for form, (dtype, precision) in FORMS.items():
            with jax.default_matmul_precision(precision):
                runs[form] = compact_vocab.build(name, args.rows, args.kept,
                                                 compute_dtype=dtype)
        seconds, loss = timing.alternate_steps(runs, args.rounds, args.steps)
        for form in runs:
            print(f"| {name} | {form} | {1000 * seconds[form]:.1f} | "
                  f"{seconds[form] / seconds['float32'] - 1:+.1%} | "
                  f"{loss[form]:.6f} |", flush=True)


if __name__ == "__main__":
    main()
