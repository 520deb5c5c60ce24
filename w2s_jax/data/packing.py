"""Several examples per row: packed training batches.

Length-bucketed batches still pad: sst2's MiniLM batches padded to fitted
lengths are about 30% padding (bench/RESULTS.md 4f), and every padded slot
costs as much as a real one. Packed, a minibatch's examples sit end to end
in rows of the stage's longest padded length, each example a contiguous
segment that attends only to itself and counts its positions from its own
start (layers.attention_allowed, classifier.pool_segments), so each
example's logits are those it would get alone in a row of its own; only
float rounding differs.

A step's shape is then (minibatches, rows, row length) with as many
examples per minibatch as before. Rows per minibatch are capped at
`minibatch_size`, so a packed minibatch holds no more tokens than the
longest unpacked one: the step's memory is unchanged.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from w2s_jax.data import batching


def first_fit(lengths, capacity: int) -> list[list[int]]:
    """First-fit decreasing: rows of positions into `lengths` whose lengths
    sum to at most `capacity` each (longest first, ties in order)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if lengths[i] <= free),
                   None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def pack(ids: list[np.ndarray], indices: np.ndarray, *, rows: int,
         length: int, pad_id: int, placed: list[list[int]] | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, segments) [rows, length] and example_segments [E] of the
    examples `indices`, packed by first_fit, or as `placed` says (rows of
    positions into `indices`, as first_fit gives them).

    Segments are numbered 1..E in row order (0: padding); example j's is
    example_segments[j]. Rows past those the examples need are padding.
    """
    if placed is None:
        placed = first_fit([len(ids[i]) for i in indices], length)
    if len(placed) > rows:
        raise ValueError(f"{len(indices)} examples need {len(placed)} rows "
                         f"of {length} tokens, more than {rows}")
    input_ids = np.full((rows, length), pad_id, np.int32)
    segments = np.zeros((rows, length), np.int32)
    example_segments = np.zeros(len(indices), np.int32)
    segment = 0
    for row, members in enumerate(placed):
        at = 0
        for j in members:
            tokens = ids[indices[j]]
            segment += 1
            input_ids[row, at:at + len(tokens)] = tokens
            segments[row, at:at + len(tokens)] = segment
            example_segments[j] = segment
            at += len(tokens)
    return input_ids, segments, example_segments


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """One batch's layout: `groups[m]` are the positions (into the batch's
    indices) of minibatch m's examples, each group packed into `rows` rows."""
    groups: tuple[np.ndarray, ...]
    rows: int


def plan(lengths: np.ndarray, batches: list[np.ndarray], *, row_length: int,
         max_rows: int, group_sizes: list[int], quantum: int, shapes: int,
         shape_cost: float = 0.0) -> list[PackedBatch]:
    """Each batch split into the fewest minibatches (of one of
    `group_sizes` examples, largest first) whose examples pack into at most
    `max_rows` rows each, with rows rounded up to one of a few counts.

    A batch's shape is (minibatches, rows). The row counts, multiples of
    `quantum` (the mesh's batch divisor), are fitted to the batches at hand
    for the fewest padded rows in all plus `shape_cost` rows per shape
    (what a program's compile costs, in rows of steps), with at most
    `shapes` shapes (at least one per minibatch count): so a stage compiles
    no more programs than it would padded to fitted lengths, and a shape
    only when it saves more padded rows than its compile costs.
    """
    layouts = []
    for indices in batches:
        for size in sorted(group_sizes, reverse=True):
            groups = _split(lengths[indices], size)
            need = max(len(first_fit(lengths[indices[g]], row_length))
                       for g in groups)
            if need <= max_rows:
                break
        else:  # one example per row fits by construction: max_rows >= size
            raise ValueError(f"examples of a batch do not pack into "
                             f"{max_rows} rows of {row_length} tokens")
        layouts.append((groups, need))
    needs: dict[int, list[int]] = {}  # minibatches -> each batch's rows
    for groups, need in layouts:
        needs.setdefault(len(groups), []).append(-(-need // quantum) * quantum)
    rows_for = _fit_row_counts(needs, shapes, shape_cost)
    return [PackedBatch(tuple(groups),
                        next(r for r in rows_for[len(groups)] if r >= need))
            for groups, need in layouts]


def _fit_row_counts(needs: dict[int, list[int]], shapes: int,
                    shape_cost: float = 0.0) -> dict[int, tuple[int, ...]]:
    """{minibatches: row counts} with the fewest padded rows in all (rows
    times minibatches) plus `shape_cost` per count, at most `shapes` counts
    over all minibatch counts and at least one each: batching's dynamic
    program per minibatch count, the counts shared out between them by a
    second one, and then the number of counts that costs least."""
    shapes = max(shapes, len(needs))
    options = {}  # minibatches -> [(padded rows, counts)] for 1, 2, ... counts
    for m, rows in needs.items():
        values, counts = np.unique(rows, return_counts=True)
        options[m] = []
        for k in range(1, min(len(values), shapes) + 1):
            chosen = batching.best_rungs(values, counts, k)
            padded = sum(c * next(r for r in chosen if r >= v)
                         for v, c in zip(values, counts))
            options[m].append((m * padded, chosen))
    best = {0: (0, {})}  # shapes used -> (padded rows, {m: counts})
    for m, choices in options.items():
        extended = {}
        for used, (total, picked) in best.items():
            for k, (cost, chosen) in enumerate(choices[:shapes - used], 1):
                if (used + k not in extended
                        or total + cost < extended[used + k][0]):
                    extended[used + k] = (total + cost, {**picked, m: chosen})
        best = extended
    used = min(best, key=lambda k: (best[k][0] + shape_cost * k, k))
    return best[used][1]


def _split(lengths: np.ndarray, size: int) -> list[np.ndarray]:
    """Positions 0..len-1 in len/size groups of `size`, balanced by tokens:
    longest first, each to the group with the fewest tokens and room left."""
    n_groups = len(lengths) // size
    members: list[list[int]] = [[] for _ in range(n_groups)]
    tokens = np.zeros(n_groups, np.int64)
    for i in np.argsort(-lengths, kind="stable"):
        open_groups = [g for g in range(n_groups) if len(members[g]) < size]
        g = min(open_groups, key=lambda g: tokens[g])
        members[g].append(int(i))
        tokens[g] += lengths[i]
    return [np.array(sorted(m), np.int64) for m in members]


@dataclasses.dataclass(frozen=True)
class EvalPacking:
    """How a stage packs the sets it predicts on: rows of `length` tokens,
    a batch of at most max(rows) rows padded to one of `rows`, and `slots`
    example slots in every row (those past its own examples are
    discarded). One plan for all of a stage's sets, so its predict step
    compiles one program per row count."""
    length: int
    rows: tuple[int, ...]
    slots: int


def eval_batches(lengths: np.ndarray, *, length: int, rows: int
                 ) -> list[list[list[int]]]:
    """A prediction pass's batches: every example placed by first-fit
    decreasing over the whole set (long examples first, short ones filling
    their rows' ends, so few slots are left empty), its rows taken in
    order, `rows` to a batch (the last may have fewer). Each batch is a
    list of rows, each row the positions of its examples."""
    placed = first_fit(lengths, length)
    return [placed[i:i + rows] for i in range(0, len(placed), rows)]


def eval_plan(length_sets: list[np.ndarray], *, length: int, rows: int,
              quantum: int) -> EvalPacking:
    """The EvalPacking of a stage's prediction sets, batches of up to
    `rows` rows (a multiple of `quantum`, the mesh's batch divisor).

    Example slots per row: as many as the fullest row holds, rounded up to
    a power of two (so stages of other seeds mostly share the program).
    Row counts: `rows`, and each set's last batch rounded up to a multiple
    of 8 and of `quantum`, so a short last batch is not padded to a whole
    one."""
    if rows % quantum:
        raise ValueError(f"{rows} rows a batch do not split over the "
                         f"mesh's {quantum} batch shards")
    step = math.lcm(8, quantum)
    fullest, counts = 1, {rows}
    for lengths in length_sets:
        batches = eval_batches(lengths, length=length, rows=rows)
        if batches:
            fullest = max(fullest, *(len(r) for b in batches for r in b))
            counts.add(min(rows, -(-len(batches[-1]) // step) * step))
    return EvalPacking(int(length), tuple(sorted(int(c) for c in counts)),
                       1 << (fullest - 1).bit_length())


def waste(lengths: np.ndarray, batches: list[np.ndarray],
          layouts: list[PackedBatch], row_length: int) -> float:
    """Fraction of these packed batches' token slots that are padding."""
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(len(p.groups) * p.rows * row_length for p in layouts)
    return 1.0 - real / total if total else 0.0
