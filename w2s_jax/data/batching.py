"""Tokenized examples -> fixed-shape, length-bucketed, padded batches.

Shapes are what jit compiles for, so padded lengths come from a short
geometric ladder (each rung at most 1.5x the one below): few compilations,
and at most a third of a batch wasted on padding, usually far less because
batches are formed from examples of similar length.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from w2s_jax.core.errors import DataError
from w2s_jax.models.tokenizers import Tokenizer

_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
           2048, 3072, 4096, 6144, 8192)
# Batches are formed within windows of this many batches sorted by length:
# large enough to group similar lengths, small enough to keep batches mixed.
_SORT_WINDOW_BATCHES = 16


@dataclasses.dataclass
class Tokenized:
    """Token ids of every example, and which ones the over-length policy kept."""
    ids: list[np.ndarray]
    too_long: np.ndarray  # bool [N]: longer than max_ctx before the policy
    # int [N]: tokens per example before truncation (None: not recorded)
    full_lengths: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)


def tokenize(tokenizer: Tokenizer, texts: list[str], *, max_ctx: int,
             overlength: str) -> Tokenized:
    """Encode; with overlength='truncate' keep the LAST max_ctx tokens.

    The end is kept because the classifier reads the last token, and the
    formatted examples put what is being judged (the candidate answer) last.
    With 'drop', the caller removes `too_long` examples (counted and logged).
    """
    ids = tokenizer.encode(texts)
    full_lengths = np.array([len(x) for x in ids], dtype=np.int64)
    too_long = full_lengths > max_ctx
    if overlength == "truncate":
        ids = [x[-max_ctx:] for x in ids]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise DataError(f"{len(empty)} examples tokenize to no tokens "
                        f"(first: {texts[empty[0]]!r}); remove the rows with "
                        f"empty text from the data")
    return Tokenized([np.asarray(x, dtype=np.int32) for x in ids], too_long,
                     full_lengths)


def padded_length(length: int, max_ctx: int) -> int:
    for rung in _LADDER:
        if rung >= length:
            return min(rung, max(max_ctx, length))
    return length


def train_batches(lengths: np.ndarray, *, batch_size: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of index batches: shuffled, length-grouped, remainder dropped.

    Dropping the remainder keeps every step's batch exactly `batch_size`,
    which the confidence loss's batch statistics assume.
    """
    order = rng.permutation(len(lengths))
    n_batches = len(order) // batch_size
    order = order[:n_batches * batch_size]
    window = batch_size * _SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(np.split(chunk, len(chunk) // batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, *, batch_size: int) -> list[np.ndarray]:
    """All examples, sorted by length; the last batch may be short."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad(ids: list[np.ndarray], indices: np.ndarray, *, rows: int, max_ctx: int,
        pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [rows, L] ids and mask; rows beyond the examples are pad.

    Filler rows (to reach a fixed batch shape) get one unmasked pad token so
    that every row has a last real position; their outputs are discarded.
    """
    length = padded_length(max(len(ids[i]) for i in indices), max_ctx)
    input_ids = np.full((rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for row, i in enumerate(indices):
        input_ids[row, :len(ids[i])] = ids[i]
        mask[row, :len(ids[i])] = 1
    mask[len(indices):, 0] = 1
    return input_ids, mask


def padding_waste(lengths: np.ndarray, batches: list[np.ndarray],
                  max_ctx: int) -> float:
    """Fraction of token slots in these batches that are padding."""
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(len(b) * padded_length(int(lengths[b].max()), max_ctx)
                for b in batches)
    return 1.0 - real / total if total else 0.0
