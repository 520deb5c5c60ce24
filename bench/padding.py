"""Padding waste of real-task training batches: the trainer's vs naive.

Waste = padding token slots / all token slots of the batches of one epoch
(what w2s_jax.data.batching.padding_waste measures). Columns:

  trainer      batching.train_batches (shuffle, sort within windows of 16
               batches, split) padded to the lengths batching.fit_rungs
               fits to all epochs' batches, i.e. exactly the batches
               loop.finetune feeds the train step;
  ladder       the same batches padded to the fixed ladder (16, 24, 32,
               48, 64, ...), as the trainer did before fit_rungs;
  sorted/exact the same length-grouped batches padded to their exact max
               (one compile per distinct length): the floor for these
               batches;
  random/ladder shuffled batches with no length grouping, ladder lengths;
  random/exact  shuffled batches padded to their own max length: the naive
               "pad to the batch max" collator;
  max_ctx      every example padded to max_ctx: the naive fixed shape;
  eval         batching.eval_batches (sorted) at eval_batch_size, padded
               to the lengths fitted to them and filler rows to the full
               batch, as loop.predict does.

Train columns average `--epochs` epochs of the trainer's own rng
(default_rng([seed, epoch])). Examples are the task's train pool as
splits.load_task builds it (balanced, all rows), tokenized as
experiment._tokenize_all does (overlength="drop" by default: examples
longer than max_ctx are dropped and counted).

  W2S_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python bench/padding.py
"""
from __future__ import annotations

import argparse

import numpy as np

from w2s_jax.data import batching, sources, splits
from w2s_jax.models import registry, tokenizers


def waste_exact(lengths, batches):
    """Padding fraction when each batch is padded to its own max length."""
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - real / total


def random_batches(lengths, batch_size, rng):
    order = rng.permutation(len(lengths))
    n = len(order) // batch_size
    return np.split(order[:n * batch_size], n)


def eval_waste(lengths, batch_size, max_ctx):
    """Filler rows of the short last batch count as waste, as predict pads
    every batch to eval_batch_size rows."""
    batches = batching.eval_batches(lengths, batch_size=batch_size)
    rungs = batching.fit_rungs(lengths, batches, max_ctx)
    real = int(lengths.sum())
    total = sum(batch_size * batching.padded_length(int(lengths[b].max()),
                                                    max_ctx, rungs)
                for b in batches)
    return 1.0 - real / total


def load_tokenizers(names):
    out = {}
    for name in names:
        if name == "byte":
            out[name] = tokenizers.ByteTokenizer()
            continue
        try:
            out[name] = registry.resolve(name).tokenizer
        except Exception as err:  # missing offline package, no hub access
            print(f"tokenizer {name}: not available offline "
                  f"({type(err).__name__}: {str(err).splitlines()[0][:120]})")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="sst2,sciq,boolq")
    p.add_argument("--tokenizers", default="byte,minilm-l6,smollm2-135m",
                   help="'byte' = the byte-level tokenizer of the random "
                        "GPT-2s; others are registry names")
    p.add_argument("--max-ctx", type=int, default=512,
                   help="512: the positions of the tiny random GPT-2s and "
                        "of MiniLM")
    p.add_argument("--overlength", default="drop", choices=("drop", "truncate"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    data_dir = sources.resolve_data_dir(None)
    print(f"data: {data_dir or 'hub'}; max_ctx {args.max_ctx}, overlength "
          f"{args.overlength}, batch {args.batch_size}, eval batch "
          f"{args.eval_batch_size}, {args.epochs} epochs, seed {args.seed}")
    toks = load_tokenizers(args.tokenizers.split(","))
    print("\n| task | tokenizer | examples | dropped | mean len | p50 | p95 | "
          "max | trainer | ladder | sorted/exact | random/ladder | "
          "random/exact | max_ctx | eval |")
    print("|---|---|" + "---:|" * 13)
    for task in args.tasks.split(","):
        data = splits.load_task(task, data_dir=data_dir, seed=args.seed,
                                n_train=None, n_test=None)
        for tname, tok in toks.items():
            tokd = batching.tokenize(tok, data.train_texts, max_ctx=args.max_ctx,
                                     overlength=args.overlength)
            keep = (~tokd.too_long if args.overlength == "drop"
                    else np.ones(len(tokd.ids), bool))
            lengths = tokd.lengths[keep]
            cols = {k: [] for k in ("trainer", "ladder", "sorted_exact",
                                    "random_ladder", "random_exact")}
            # The trainer's own generator and batches, its rungs fitted to
            # all epochs' batches.
            epochs = [batching.train_batches(
                lengths, batch_size=args.batch_size,
                rng=np.random.default_rng([args.seed, epoch]))
                for epoch in range(args.epochs)]
            rungs = batching.fit_rungs(
                lengths, [b for batches in epochs for b in batches], args.max_ctx)
            for epoch, batches in enumerate(epochs):
                cols["trainer"].append(batching.padding_waste(
                    lengths, batches, args.max_ctx, rungs))
                cols["ladder"].append(batching.padding_waste(
                    lengths, batches, args.max_ctx))
                cols["sorted_exact"].append(waste_exact(lengths, batches))
                rnd = random_batches(lengths, args.batch_size,
                                     np.random.default_rng([args.seed, epoch, 1]))
                cols["random_ladder"].append(batching.padding_waste(
                    lengths, rnd, args.max_ctx))
                cols["random_exact"].append(waste_exact(lengths, rnd))
            fixed = 1.0 - lengths.mean() / args.max_ctx
            ev = eval_waste(lengths, args.eval_batch_size, args.max_ctx)
            pct = np.percentile(lengths, [50, 95])
            print(f"| {task} | {tname} | {len(lengths)} | "
                  f"{int(tokd.too_long.sum())} | {lengths.mean():.0f} | "
                  f"{pct[0]:.0f} | {pct[1]:.0f} | {lengths.max()} | "
                  + " | ".join(f"{np.mean(v):.1%}" for v in cols.values())
                  + f" | {fixed:.1%} | {ev:.1%} |", flush=True)


if __name__ == "__main__":
    main()
