"""Tokenized examples -> fixed-shape, length-bucketed, padded batches.

Shapes are what jit compiles for, so a pass over a set of batches pads them
to a few lengths only ("rungs"). The fixed ladder (each rung at most 1.5x
the one below) wastes at most a third of a batch, usually far less because
batches are formed from examples of similar length. `fit_rungs` picks, for
the batches at hand, the rungs that waste the least padding in all, with
no more rungs (so compiles) than the ladder: one batch may get more
padding than under the ladder, but the pass as a whole never does.
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


def padded_length(length: int, max_ctx: int,
                  rungs: tuple[int, ...] | None = None) -> int:
    """The smallest of `rungs` (fit_rungs's, which are capped already) that
    holds `length`; without them the ladder's, capped at max_ctx. A length
    past every rung is its own."""
    if rungs is not None:
        return next((rung for rung in rungs if rung >= length), length)
    for rung in _LADDER:
        if rung >= length:
            return min(rung, max(max_ctx, length))
    return length


def fit_rungs(lengths: np.ndarray, batches: list[np.ndarray], max_ctx: int,
              quantum: int = 8) -> tuple[int, ...]:
    """The padded lengths for `batches` that waste the least padding, with
    no more of them than the ladder would use.

    Each batch is padded to the smallest rung that holds its longest
    example, so the total padded length is a sum over batches; the best k
    rungs, chosen from the batches' longest lengths rounded up to a
    multiple of `quantum`, come from a dynamic program over those sorted
    lengths (each rung covers a run of them, and ends at its longest).
    With k the number of ladder rungs these batches reach, the ladder's own
    choice is one candidate, so this never pads more than the ladder does
    nor compiles more shapes.

    `quantum` keeps every rung a multiple of it (or max_ctx). 8 suits
    accelerators' tiles, and draws the rungs from few values, so the runs
    of a seed sweep mostly pad to the same lengths and load each other's
    compiled programs from the persistent cache (with 1, each seed's rungs
    differ a little). On 2048-example slices of sst2, MiniLM's tokens, it
    pads 8-16% fewer slots than the ladder, 1 pads 10-20% fewer
    (bench/RESULTS.md 4f).
    """
    return _fit([int(lengths[b].max()) for b in batches], max_ctx, quantum)


def eval_rungs(length_sets: list[np.ndarray], batch_size: int, max_ctx: int,
               quantum: int = 8) -> tuple[int, ...]:
    """fit_rungs for the eval batches (eval_batches) of several sets that
    one prediction step runs on (a stage's test set, validation slice and
    training examples): one set of rungs, so the step compiles no more
    shapes for all of them than the ladder would."""
    return _fit([int(lengths[b].max()) for lengths in length_sets
                 for b in eval_batches(lengths, batch_size=batch_size)],
                max_ctx, quantum)


def _fit(longest: list[int], max_ctx: int, quantum: int) -> tuple[int, ...]:
    """fit_rungs on the batches' longest lengths."""
    longest = np.array(longest, np.int64)
    if not len(longest):
        return ()
    k = len({padded_length(int(n), max_ctx) for n in longest})
    # A rung never passes what the ladder pads a batch to (max_ctx caps it).
    rounded = np.minimum(-(-longest // quantum) * quantum,
                         [padded_length(int(n), max_ctx) for n in longest])
    values, counts = np.unique(rounded, return_counts=True)
    return best_rungs(values, counts, k)


def best_rungs(values: np.ndarray, counts: np.ndarray, k: int) -> tuple[int, ...]:
    """At most k of `values` (sorted, distinct) minimising the sum over
    items of the smallest chosen value >= the item's value (`counts` items
    per value); the largest value is always chosen."""
    n = len(values)
    before = np.concatenate([[0], np.cumsum(counts)])  # items below values[i]
    # cost[j][i]: best total for values[:i] with j rungs, the last at values[i-1]
    cost = np.full((k + 1, n + 1), np.inf)
    cost[0, 0] = 0.0
    start = np.zeros((k + 1, n + 1), np.int64)
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            # The last rung (values[i-1]) covers values[s:i] for some s < i.
            totals = cost[j - 1, :i] + values[i - 1] * (before[i] - before[:i])
            start[j, i] = int(np.argmin(totals))
            cost[j, i] = totals[start[j, i]]
    j, i, chosen = int(np.argmin(cost[:, n])), n, []
    while i > 0:
        chosen.append(int(values[i - 1]))
        i, j = start[j, i], j - 1
    return tuple(sorted(chosen))


def train_batches(lengths: np.ndarray, *, batch_size: int,
                  rng: np.random.Generator,
                  by_length: bool = True) -> list[np.ndarray]:
    """One epoch of index batches: shuffled, length-grouped, remainder dropped.

    Dropping the remainder keeps every step's batch exactly `batch_size`,
    which the confidence loss's batch statistics assume. Without
    `by_length` the batches are simply shuffled, as the paper's code draws
    them: packed rows (data/packing.py) need no grouping by length.
    """
    order = rng.permutation(len(lengths))
    n_batches = len(order) // batch_size
    order = order[:n_batches * batch_size]
    if not by_length:
        return np.split(order, n_batches) if n_batches else []
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
        pad_id: int, rungs: tuple[int, ...] | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [rows, L] ids and mask, L the rung (padded_length) of
    the longest example; rows beyond the examples are pad.

    Filler rows (to reach a fixed batch shape) get one unmasked pad token so
    that every row has a last real position; their outputs are discarded.
    """
    length = padded_length(max(len(ids[i]) for i in indices), max_ctx, rungs)
    input_ids = np.full((rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for row, i in enumerate(indices):
        input_ids[row, :len(ids[i])] = ids[i]
        mask[row, :len(ids[i])] = 1
    mask[len(indices):, 0] = 1
    return input_ids, mask


def padding_waste(lengths: np.ndarray, batches: list[np.ndarray],
                  max_ctx: int, rungs: tuple[int, ...] | None = None) -> float:
    """Fraction of token slots in these batches that are padding."""
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(len(b) * padded_length(int(lengths[b].max()), max_ctx, rungs)
                for b in batches)
    return 1.0 - real / total if total else 0.0
