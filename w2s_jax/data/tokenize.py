"""Tokenize the task once with every model; keep only examples all can read.

Dropping (or truncating) jointly keeps every stage of a recipe on the very
same examples, so accuracies, PGR and agreement compare like with like.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from w2s_jax.core.progress import log
from w2s_jax.data import batching


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
            raise ValueError(f"task {task!r}: the {side} set has one class "
                             f"left after over-length filtering (counts "
                             f"{np.bincount(left).tolist()})")
    ids = {index: {side: [per_side[side].ids[i] for i in kept[side]]
                   for side in side_texts}
           for index, per_side in tokenized.items()}
    return Tokenized(ids, kept, over_length)
