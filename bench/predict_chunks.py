"""The packed prediction step on CPU, its rows in chunks of several sizes.

make_predict_step runs a batch's rows through the model in chunks of at
most steps.CPU_PREDICT_TOKENS tokens a device on CPU (steps.predict_chunks).
This builds one pretrained MiniLM's predict step once per token budget
(the first, 10**9, is the batch taken whole), packs one batch of `--rows`
rows of 64 tokens from random examples of 9-19 tokens (sst2's MiniLM
lengths), and alternates the programs in one process, `--rounds` rounds of
2 calls, so all see the same machine load. It prints milliseconds per token
slot (median over rounds) and each budget's largest difference from the
whole batch's probabilities.

  OMP_NUM_THREADS=1 taskset -c 1 python bench/predict_chunks.py
  ... --models minilm-l6,minilm-l3 --rows 64 --budgets 1000000000,1024,512,256
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import packing as packing_bench  # bench/packing.py

LENGTH = 64


def table(name: str, rows: int, budgets: list[int], rounds: int) -> None:
    from w2s_jax.core import sharding
    from w2s_jax.data import packing
    from w2s_jax.train import loop, steps

    mesh, module, params, _, _ = packing_bench.step_parts(
        name, head_init="normal")
    rng = np.random.default_rng(0)
    ids = [rng.integers(1000, 2000, n).astype(np.int32)
           for n in rng.integers(9, 20, rows * 4)]
    lengths = np.array([len(x) for x in ids])
    batch = packing.eval_batches(lengths, length=LENGTH, rows=rows)[0]
    pack = loop.token_inputs(ids, pad_id=0, max_ctx=LENGTH,
                             packable=True).pack
    inputs = sharding.to_global(mesh, loop.packed_eval_inputs(
        pack, batch, rows, LENGTH, max(map(len, batch))))
    programs = {}
    for budget in budgets:
        steps.CPU_PREDICT_TOKENS = budget  # read while the step is traced
        step = steps.make_predict_step(steps.module_forward(module), mesh)
        programs[budget] = (step.lower(params, inputs).compile(),
                            steps.predict_chunks(inputs, mesh))
    whole = np.asarray(programs[budgets[0]][0](params, inputs))
    times = {budget: [] for budget in budgets}
    for _ in range(rounds):
        for budget, (program, _) in programs.items():
            np.asarray(program(params, inputs))
            started = time.perf_counter()
            for _ in range(2):
                out = np.asarray(program(params, inputs))
            times[budget].append((time.perf_counter() - started) / 2)
    print(f"\n{name}, {rows} rows x {LENGTH} tokens, "
          f"{sum(map(len, batch))} examples\n")
    print("| tokens a chunk (budget) | chunks | ms / token slot | vs whole | "
          "max |p - p_whole| |")
    print("|---|---:|---:|---:|---:|")
    base = np.median(times[budgets[0]])
    for budget, (program, chunks) in programs.items():
        diff = np.abs(np.asarray(program(params, inputs)) - whole).max()
        median = np.median(times[budget])
        print(f"| {rows // chunks * LENGTH} ({budget}) | {chunks} | "
              f"{median / (rows * LENGTH) * 1e3:.3f} | "
              f"{median / base - 1:+.1%} | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm-l6")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--budgets", default="1000000000,1024,512,256")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    for name in args.models.split(","):
        table(name, args.rows, budgets, args.rounds)


if __name__ == "__main__":
    main()
