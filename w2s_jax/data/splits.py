"""From raw rows to the train pool and gold test set of one experiment.

`load_task` is the one entry point: pick the splits (carving train/test out
of a mirror that lacks one, by the task's groups of related rows), format,
class-balance, shuffle and take the requested sizes, recording every step in
a JSON-serialisable provenance.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np

from w2s_jax.core.errors import DataError, UsageError
from w2s_jax.data import chess_puzzles, sources, tfds_tasks, user_tasks
from w2s_jax.data.tasks import ROW, Grouping, get_task

log = logging.getLogger(__name__)

# Part of the carve-out's definition, not an experiment knob: every seed and
# every run must see the same carved test set.
CARVE_TEST_FRACTION = 0.2

# (task, side, available, requested) already warned about: a sweep loads
# the task once per seed and loss, the warning is worth one line.
_WARNED_SHORT: set[tuple] = set()


@dataclass
class TaskData:
    name: str
    train_texts: list[str]
    train_labels: np.ndarray  # int32, values in {0, 1}
    test_texts: list[str]
    test_labels: np.ndarray
    provenance: dict
    # int64, aligned with train_texts: the group (task.grouping) of the raw
    # row each train example came from; pass it to split_halves so that the
    # halves A/B never share a group.
    train_groups: np.ndarray
    # Aligned with test_texts: each example's difficulty level (str), where
    # the task has a difficulty field (TaskSpec.difficulty); else None.
    test_difficulty: np.ndarray | None = None


def stable_hash(text: str) -> int:
    """A seed component from a string; Python's hash() is salted per process."""
    return zlib.crc32(text.encode("utf-8"))


def _first_appearance_ids(groups) -> np.ndarray:
    """Group labels renumbered 0, 1, ... in order of first appearance."""
    groups = np.asarray(groups)
    _, first, inverse = np.unique(groups, return_index=True,
                                  return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _take_groups(ids: np.ndarray, rng: np.random.Generator,
                 target: int) -> np.ndarray:
    """A mask of the rows in the first groups of a seeded order of the
    groups, as many groups as bring the row count closest to `target`
    (the fewer on a tie). `ids` must be first-appearance ids: when every
    group is one row, the groups' order is `rng.permutation(len(ids))` and
    the mask is exactly its first `target` rows."""
    n_groups = int(ids.max()) + 1 if len(ids) else 0
    group_order = rng.permutation(n_groups)
    sizes = np.bincount(ids, minlength=n_groups)
    reached = np.concatenate([[0], np.cumsum(sizes[group_order])])
    n_taken = int(np.argmin(np.abs(reached - target)))
    taken = np.zeros(n_groups, dtype=bool)
    taken[group_order[:n_taken]] = True
    return taken[ids]


def take_whole_groups(groups, rng: np.random.Generator, target: int) -> np.ndarray:
    """A mask of about `target` rows made of whole groups, in a seeded
    order; with one row per group, exactly the first `target` rows of
    `rng.permutation(len(groups))`."""
    return _take_groups(_first_appearance_ids(groups), rng, target)


def carve(rows: list, task_name: str,
          test_fraction: float = CARVE_TEST_FRACTION,
          grouping: Grouping = ROW) -> tuple[list, list, dict]:
    """Split raw rows into (train, test) with a seed fixed by the task name.

    Whole groups of `grouping` go to one side, so no test row shares a group
    with a train row; the test side gets about `test_fraction` of the rows.
    It works on raw rows, before formatting, so the candidates of one
    multiple-choice item never land on both sides. Each side keeps the
    file's row order. With one row per group this is a plain seeded split
    of the rows.
    """
    seed = stable_hash(f"carve/{task_name}")
    ids = grouping.assign(rows)
    n_test = int(round(len(rows) * test_fraction))
    in_test = _take_groups(ids, np.random.default_rng(seed), n_test)
    test_idx, train_idx = np.flatnonzero(in_test), np.flatnonzero(~in_test)
    info = {"test_fraction": test_fraction, "seed": seed,
            "rows_train": len(train_idx), "rows_test": len(test_idx),
            "grouping": grouping.name,
            "groups": int(ids.max()) + 1 if len(ids) else 0,
            "groups_train": len(np.unique(ids[train_idx])),
            "groups_test": len(np.unique(ids[test_idx]))}
    return [rows[i] for i in train_idx], [rows[i] for i in test_idx], info


def balance_indices(labels: np.ndarray, rng: np.random.Generator,
                    num_classes: int = 2) -> np.ndarray:
    """Indices of a balanced subset (50/50 for two classes): every example
    of the rarest class and a seeded choice of as many of each other class,
    in their original order."""
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    keep = min(len(idx) for idx in by_class)
    chosen = [rng.choice(idx, size=keep, replace=False) for idx in by_class]
    return np.sort(np.concatenate(chosen))


def take_first(labels: np.ndarray, order: np.ndarray, n: int,
               balanced: bool, num_classes: int = 2) -> np.ndarray:
    """The first n of a shuffled `order`. When `balanced`, the first of each
    class instead, n // K apiece (the n % K left over go one each to the
    classes that come first in `order`), so a small sample of a balanced
    pool is balanced too."""
    if not balanced:
        return order[:n]
    in_order = labels[order]
    quota = {c: n // num_classes for c in range(num_classes)}
    _, first = np.unique(in_order, return_index=True)
    for c in in_order[np.sort(first)][:n % num_classes]:
        quota[int(c)] += 1
    picked = np.zeros(len(order), dtype=bool)
    for c in range(num_classes):
        picked[np.flatnonzero(in_order == c)[:quota[c]]] = True
    return order[picked]


def split_halves(n: int, seed: int,
                 groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves A and B (the rest) of a pool of n, each sorted.

    Without `groups`, A is n//2 indices drawn at random. With `groups` (n
    int or string labels, e.g. TaskData.train_groups[kept]), whole groups go
    to one half and A gets as close to n//2 examples as whole groups allow;
    when every group is one example the halves are exactly those without.
    """
    rng = np.random.default_rng([seed, stable_hash("halves")])
    half = n // 2
    if groups is None:
        order = rng.permutation(n)
        return np.sort(order[:half]), np.sort(order[half:])
    if len(groups) != n:
        raise ValueError(f"split_halves: {len(groups)} group labels for a "
                         f"pool of {n}")
    in_a = _take_groups(_first_appearance_ids(groups), rng, half)
    return np.flatnonzero(in_a), np.flatnonzero(~in_a)


def _class_counts(labels: np.ndarray, num_classes: int = 2) -> dict[str, int]:
    return {str(c): int(np.sum(labels == c)) for c in range(num_classes)}


def plan_splits(spec, data_dir: str | None) -> dict:
    """Which splits to read, and whether to carve train/test out of one."""
    if data_dir is None:
        return {"source": "hub", "location": spec.hub_id,
                "hub_config": spec.hub_config,
                "hub_data_dir": spec.hub_data_dir,
                "hub_revision": spec.hub_revision,
                "splits": {"train": spec.train_split, "test": spec.test_split},
                "carve_out": None}
    have = sources.available_mirror_splits(spec, data_dir)
    plan = {"source": "mirror",
            "location": str(sources.mirror_task_dir(spec, data_dir)),
            "mirror_splits": have}
    if spec.train_split in have and spec.test_split in have:
        plan["splits"] = {"train": spec.train_split, "test": spec.test_split}
        plan["carve_out"] = None
        return plan
    # A train split is the larger pool when it is there; otherwise the
    # official test split; otherwise the mirror's only file (e.g. cr's all).
    if spec.train_split in have:
        source_split = spec.train_split
    elif spec.test_split in have:
        source_split = spec.test_split
    elif len(have) == 1:
        source_split = have[0]
    else:
        raise DataError(
            f"the mirror has neither split {spec.train_split!r} nor "
            f"{spec.test_split!r} of task {spec.name!r}, and more than one "
            f"other split to carve from: {', '.join(have)}")
    plan["splits"] = {"train": source_split, "test": source_split}
    plan["carve_out"] = {
        "from_split": source_split,
        "reason": (f"mirror lacks {spec.train_split!r} and/or "
                   f"{spec.test_split!r}; it holds {', '.join(have)}")}
    return plan


def _prepare_side(spec, side: str, split: str, rows: list, seed: int,
                  n: int | None, balance: bool
                  ) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Format, balance, shuffle and cut one side; returns texts, labels, the
    index in `rows` of each example's row, and that side's provenance."""
    # One generator per side: the train and the test side of a carve-out
    # read the same split but must not share coins.
    rng = np.random.default_rng([seed, stable_hash(f"{side}/{split}")])
    examples, source_rows = spec.format_rows_indexed(rows, rng)
    texts = [text for text, _ in examples]
    labels = np.asarray([label for _, label in examples], dtype=np.int32)
    k = spec.num_classes
    bad = labels[(labels < 0) | (labels >= k)]
    if len(bad):
        raise DataError(f"task {spec.name!r}: label {int(bad[0])} is outside "
                        f"its {k} classes 0..{k - 1}")
    counts = _class_counts(labels, k)
    if min(counts.values()) == 0:
        raise DataError(
            f"task {spec.name!r}, {side} side (split {split!r}): fewer than 2 "
            f"classes after formatting; class counts {counts}")
    info = {"split": split, "rows_read": len(rows),
            "examples_formatted": len(labels), "class_counts_formatted": counts}
    kept = (balance_indices(labels, rng, k) if balance
            else np.arange(len(labels)))
    info["examples_balanced"] = len(kept)
    info["class_counts_balanced"] = _class_counts(labels[kept], k)
    order = kept[rng.permutation(len(kept))]
    if n is not None and n > len(order):
        key = (spec.name, side, split, len(order), n)
        if key not in _WARNED_SHORT:
            _WARNED_SHORT.add(key)
            field = "n_train" if side == "train" else "n_test"
            log.warning("task %s: the %s side has %d examples%s, fewer than "
                        "config.%s=%d; using all %d (the results record both "
                        "as n_requested and n_used)", spec.name, side,
                        len(order), " after class balancing" if balance else "",
                        field, n, len(order))
    take = len(order) if n is None else min(n, len(order))
    chosen = take_first(labels, order, take, balanced=balance, num_classes=k)
    info["n_requested"] = n
    info["n_used"] = len(chosen)
    info["class_counts"] = _class_counts(labels[chosen], k)
    return ([texts[i] for i in chosen], labels[chosen], source_rows[chosen],
            info)


def load_task(name: str, *, data_dir: str | None, seed: int,
              n_train: int | None, n_test: int | None,
              balance: bool = True, task_fields: dict | None = None,
              tfds_data_dir: str | None = None,
              chess: dict | None = None) -> TaskData:
    """The train pool and gold test set of task `name`.

    data_dir: a mirror directory, or None for the hub (resolve a config
    value with `sources.resolve_data_dir` first). n_train / n_test: sizes
    to take after balancing, None = all. A `file:<path>` task reads that
    file with `task_fields` (data/user_tasks.py) and carves it; a
    `tfds:<builder>` task reads TFDS's files under `tfds_data_dir` (None =
    TFDS's default) with `task_fields` (data/tfds_tasks.py); a chess task
    generates (or reads cached) puzzles with `chess`, the config.chess
    settings (data/chess_puzzles.py), and carves them.
    """
    for field, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and n <= 0:
            raise UsageError(f"{field} must be positive or None, got {n}")
    if user_tasks.is_file_task(name):
        spec = user_tasks.spec_for(name, task_fields or {})
        plan = {**user_tasks.provenance(spec.hub_id),
                "splits": {"train": "file", "test": "file"},
                "carve_out": {"from_split": "file",
                              "reason": "a user file is one split"}}

        def read(split):  # the file is its one split
            return user_tasks.checked_rows(spec.hub_id, task_fields or {})
    elif chess_puzzles.is_chess_task(name):
        spec, plan, read = chess_puzzles.open_task(name, chess or {})
    elif tfds_tasks.is_tfds_task(name):
        spec, plan, read = tfds_tasks.open_task(name, task_fields or {},
                                                tfds_data_dir)
    else:
        spec = get_task(name)
        plan = plan_splits(spec, data_dir)

        def read(split):
            return sources.load_raw(spec, split, data_dir)
    splits = plan["splits"]
    if plan["carve_out"] is None:
        train_rows = read(splits["train"])
        test_rows = read(splits["test"])
    else:
        all_rows = read(splits["train"])
        train_rows, test_rows, carve_info = carve(all_rows, spec.name,
                                                  grouping=spec.grouping)
        plan["carve_out"].update(carve_info, rows_read=len(all_rows))
    # Numbered over the train pool's rows alone: the ids serve the halves.
    row_groups = spec.grouping.assign(train_rows)
    train_texts, train_labels, train_rows_used, train_info = _prepare_side(
        spec, "train", splits["train"], train_rows, seed, n_train, balance)
    test_texts, test_labels, test_rows_used, test_info = _prepare_side(
        spec, "test", splits["test"], test_rows, seed, n_test, balance)
    test_difficulty = None
    if spec.difficulty is not None:
        # "unknown" where a row has no value: every example keeps a level.
        test_difficulty = np.asarray(
            [str(spec.difficulty(test_rows[i]) or "unknown")
             for i in test_rows_used])
    train_groups = row_groups[train_rows_used]
    train_info["grouping"] = spec.grouping.name
    train_info["groups_used"] = len(np.unique(train_groups))
    provenance = {"task": spec.name, **plan, "seed": seed, "balance": balance,
                  "grouping": spec.grouping.name,
                  "train": train_info, "test": test_info}
    return TaskData(spec.name, train_texts, train_labels, test_texts,
                    test_labels, provenance, train_groups, test_difficulty)
