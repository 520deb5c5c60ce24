"""The train step with the whole token table against a compact vocabulary's.

w2s_jax/models/vocabulary.py: a finetuned classifier trains a table of only
the rows its run's examples use. This builds the packed MiniLM train step
(bench/packing.py's 32 examples, rows of 64 tokens) twice, with MiniLM's
whole 30,522-row table and with a vocabulary of the first `--kept` ids
(7,209 by default, as many as the 4096 + 256 sst2 examples of the
end-to-end benchmark and the pad use, which its run prints; the batch's
ids are among them), and alternates them in one process. The losses show the two compute
the same thing; the compiled step's argument bytes (params and Adam state)
and temporaries show the memory.

  OMP_NUM_THREADS=1 taskset -c 0 python bench/compact_vocab.py \\
      --models minilm-l6,minilm-l3 --rounds 8
"""
from __future__ import annotations

import argparse

import numpy as np

import packing as packing_bench  # bench/packing.py
import timing  # bench/timing.py

def build(name: str, rows: int, kept: int | None,
          compute_dtype: str = "float32"):
    """[compiled step, state, batch] of the packed xent step (also for
    bench/matmul_precision.py); traced under the caller's matmul
    precision."""
    from w2s_jax.models import registry, vocabulary
    from w2s_jax.train import steps

    # A normal head and one-hot targets, so the backbone's gradients are
    # not zero at the first step.
    mesh, module, params, ids, settings = packing_bench.step_parts(
        name, minibatch=rows, lr=1e-4, head_init="normal")
    model = registry.resolve(name)
    if kept is not None:
        vocab = vocabulary.used_by([*ids, np.arange(kept)],
                                   full_size=model.backbone_config.vocab_size,
                                   pad_id=model.tokenizer.pad_id)
        ids = [vocab.renumber(x) for x in ids]
        params = steps.compact_embedding(params, model, vocab)
        model = with_table_rows(model, vocab.size)
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal",
                                    compute_dtype=compute_dtype)
    step, state, batch = packing_bench.packed_xent_step(
        mesh, module, params, ids, settings, rows)
    return [step.lower(state, batch).compile(), state, batch]


def with_table_rows(model, rows: int):
    """`model` with a token table of `rows` rows (as TokenLearner.net)."""
    import dataclasses
    return dataclasses.replace(model, backbone_config=dataclasses.replace(
        model.backbone_config, vocab_size=rows))


def step_args(doc: str) -> argparse.Namespace:
    """The command line of a script alternating packed MiniLM steps (also
    bench/matmul_precision.py's), parsed before JAX starts; malloc then
    keeps freed memory, so no step page-faults (RESULTS 6c)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--models", default="minilm-l6,minilm-l3")
    p.add_argument("--rows", type=int, default=8, help="rows of 64 tokens a step")
    p.add_argument("--kept", type=int, default=7209,
                   help="ids of the compact vocabulary")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="steps a round")
    args = p.parse_args()
    from w2s_jax.core import host_memory
    host_memory.keep_freed_memory()
    return args


def main():
    args = step_args(__doc__)
    print("| model | table rows | step (ms) | vs whole | params + Adam state "
          "(MB) | temporaries (MB) | loss after 3 steps |")
    print("|---|---:|---:|---:|---:|---:|---|")
    from w2s_jax.models import registry
    for name in args.models.split(","):
        model = registry.resolve(name)
        runs = {"whole": build(name, args.rows, None),
                "compact": build(name, args.rows, args.kept)}
        seconds, loss = timing.alternate_steps(runs, args.rounds, args.steps)
        for form, run in runs.items():
            memory = run[0].memory_analysis()
            rows = registry.embedding_table(model, run[1]["params"]["backbone"])
            print(f"| {name} | {rows.shape[0]:,} | {1000 * seconds[form]:.1f} | "
                  f"{seconds[form] / seconds['whole'] - 1:+.1%} | "
                  f"{memory.argument_size_in_bytes / 1e6:.1f} | "
                  f"{memory.temp_size_in_bytes / 1e6:.1f} | {loss[form]:.6f} |",
                  flush=True)


if __name__ == "__main__":
    main()
