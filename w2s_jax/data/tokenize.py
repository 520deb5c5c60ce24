"""Tokenize the task once with every model; keep only examples all can read.

Dropping (or truncating) jointly keeps every stage of a recipe on the very
same examples, so accuracies, PGR and agreement compare like with like.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from w2s_jax.core.errors import DataError, UsageError
from w2s_jax.core.progress import log
from w2s_jax.data import batching

# A max_ctx is refused when, for some model and side, it leaves more than
# MOST_EXAMPLES of the examples with next to nothing: with overlength=
# "truncate", examples keeping under NEAR_NOTHING of their tokens; with
# "drop", dropped examples. (config.validate refuses max_ctx below
# config.MIN_CTX outright.)
MOST_EXAMPLES = 0.5
NEAR_NOTHING = 0.1


@dataclasses.dataclass
class Tokenized:
    # model index -> side ("train" pool / "test") -> ids of the kept examples;
    # models without a tokenizer (bag of words) have no entry.
    ids: dict[int, dict[str, list[np.ndarray]]]
    kept: dict[str, np.ndarray]  # side -> indices into the task's examples
    over_length: dict[str, int]  # side -> examples longer than max_ctx


def tokenize_jointly(side_texts: dict[str, list[str]], side_labels: dict,
                     models: list, *, max_ctx: int, overlength: str,
                     task: str) -> Tokenized:
    """`overlength`: "drop" examples too long for ANY model, or "truncate"
    (keep the last tokens, counted all the same)."""
    tokenized = {index: {side: batching.tokenize(model.tokenizer, texts,
                                                 max_ctx=max_ctx,
                                                 overlength=overlength)
                         for side, texts in side_texts.items()}
                 for index, model in enumerate(models) if model.tokenizer}
    for index, per_side in tokenized.items():
        for side, tok in per_side.items():
            check_max_ctx(tok.full_lengths, max_ctx=max_ctx,
                          overlength=overlength, side=side,
                          model=models[index].name)
    kept, over_length = {}, {}
    for side, texts in side_texts.items():
        too_long = np.zeros(len(texts), bool)
        for per_side in tokenized.values():
            too_long |= per_side[side].too_long
        keep = ~too_long if overlength == "drop" else np.ones_like(too_long)
        kept[side] = np.flatnonzero(keep)
        over_length[side] = int(too_long.sum())
        if too_long.any():
            action = "dropped" if overlength == "drop" else "truncated"
            log(f"[data] {side}: {int(too_long.sum())} of {len(too_long)} "
                f"examples longer than max_ctx={max_ctx} were {action}")
        left = side_labels[side][kept[side]]
        if len(np.unique(left)) < 2:
            raise DataError(f"task {task!r}: the {side} set has one class "
                            f"left after over-length filtering (counts "
                            f"{np.bincount(left).tolist()}); raise "
                            f"config.max_ctx or set config.overlength=truncate")
    ids = {index: {side: [per_side[side].ids[i] for i in kept[side]]
                   for side in side_texts}
           for index, per_side in tokenized.items()}
    return Tokenized(ids, kept, over_length)


def check_max_ctx(full_lengths: np.ndarray, *, max_ctx: int, overlength: str,
                  side: str, model: str) -> None:
    """UsageError when max_ctx leaves most examples with next to nothing
    (see MOST_EXAMPLES), naming the share and the lengths."""
    if full_lengths is None or not len(full_lengths):
        return
    hit = (full_lengths * NEAR_NOTHING > max_ctx if overlength == "truncate"
           else full_lengths > max_ctx)
    if hit.mean() <= MOST_EXAMPLES:
        return
    share = (f"{hit.mean():.0%} of the {side} examples ({int(hit.sum())} of "
             f"{len(hit)})")
    effect = (f"cuts {share} to under a tenth of their tokens"
              if overlength == "truncate" else
              f"drops {share}, as longer than that")
    raise UsageError(
        f"config.max_ctx={max_ctx} {effect} for model {model!r} "
        f"(config.overlength={overlength}; the examples have a median of "
        f"{int(np.median(full_lengths))} tokens, at most "
        f"{int(full_lengths.max())}); raise --config.max_ctx, e.g. to "
        f"{int(np.percentile(full_lengths, 90))} (keeps 90% of the examples "
        f"whole)")
