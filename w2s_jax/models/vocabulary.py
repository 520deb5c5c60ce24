"""A learner's own vocabulary: the token ids its examples use, and nothing else.

A classifier reads its token embedding table only at the ids of its inputs,
so a row that no example of the run uses gets a zero gradient at every step,
keeps zero Adam moments and is never updated (weight decay shrinks it, but
nothing reads it). Training a table of only the used rows, with the ids
renumbered to their position in it, therefore gives the same predictions,
while the table's gradient, its two moments and Adam's passes over them
shrink with it: the 4096 + 256 sst2 examples of bench/RESULTS.md 4l use
7,208 of MiniLM's 30,522 ids, and a 152k-row Qwen2.5 table is 15% of its
1.5B parameters.

Not for a model that also reads the table as its output layer (a tied
decoder scoring candidates by its LM head): its softmax spans every row.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import jax.numpy as jnp
import numpy as np

# The compact table's rows are rounded up to a multiple of this, so that
# the "vocab" axis divides over any power-of-two mesh axis up to it (the
# extra rows are zeros that no id points at).
ROW_MULTIPLE = 128


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """Row i of the compact table is row `ids[i]` of the full one."""
    ids: np.ndarray  # int32 [n], ascending and distinct
    full_size: int

    @property
    def size(self) -> int:
        """Rows of the compact table."""
        return -(-len(self.ids) // ROW_MULTIPLE) * ROW_MULTIPLE

    def renumber(self, ids: np.ndarray) -> np.ndarray:
        """Full-table ids as compact ones; every id must be in the vocabulary."""
        ids = np.asarray(ids)
        position = np.searchsorted(self.ids, ids)
        found = position < len(self.ids)
        found[found] = self.ids[position[found]] == ids[found]
        if not found.all():
            raise ValueError(f"token id {int(ids[~found][0])} is not in the "
                             f"vocabulary of {len(self.ids)} ids")
        return position.astype(np.int32)

    def table(self, full):
        """The compact table [size, D] of a full one [full_size, D] (numpy,
        or a jax array, also inside jit: steps.compact_embedding)."""
        if full.shape[0] != self.full_size:
            raise ValueError(f"a table of {full.shape[0]} rows is not this "
                             f"vocabulary's ({self.full_size})")
        out = jnp.zeros((self.size, *full.shape[1:]), full.dtype)
        return out.at[:len(self.ids)].set(jnp.asarray(full)[self.ids])


def used_by(sequences: Iterable[np.ndarray], *, full_size: int, pad_id: int,
            keep_below: int = 0) -> Vocabulary | None:
    """The vocabulary of `sequences` (token id arrays) plus the pad id, or
    None where it would not be smaller than the full table.

    Ids below `keep_below` are kept whether used or not, so each keeps its
    own number: a family whose forward reads the pad id itself (MPNet's
    positions count non-pad tokens) passes pad_id + 1.
    """
    arrays = [np.asarray(s, np.int64).ravel() for s in sequences]
    used = np.unique(np.concatenate([*arrays, [pad_id], np.arange(keep_below)]))
    if used.min() < 0 or used.max() >= full_size:
        raise ValueError(f"token ids must lie in [0, {full_size}); found "
                         f"{int(used.min())}..{int(used.max())}")
    vocab = Vocabulary(used.astype(np.int32), full_size)
    return vocab if vocab.size < full_size else None


def flat_sequences(ids: dict[str, Sequence]) -> list[np.ndarray]:
    """Every token array of a learner's ids (side -> examples, where an
    example is an array or a tuple of candidate arrays)."""
    return [x for side in ids.values() for example in side
            for x in (example if isinstance(example, tuple) else (example,))]


class RenumberedTokenizer:
    """A tokenizer whose ids are a vocabulary's compact numbers."""

    def __init__(self, tokenizer, vocab: Vocabulary):
        self._tokenizer, self._vocab = tokenizer, vocab
        self.pad_id = int(vocab.renumber(np.array([tokenizer.pad_id]))[0])
        self.vocab_size = vocab.size

    def encode(self, texts: Sequence[str],
               special_tokens: bool = True) -> list[list[int]]:
        return [self._vocab.renumber(np.array(ids, np.int64)).tolist()
                for ids in self._tokenizer.encode(texts, special_tokens)]
