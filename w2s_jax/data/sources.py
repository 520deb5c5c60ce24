"""Raw rows of a task, from a local mirror or from the Hugging Face hub.

A mirror is laid out as `<data_dir>/<task name>/<split>.jsonl`, with the
hub's field names, so the same formatter reads either source. Both go
through `datasets.load_dataset`, which caches the parsed JSON as Arrow.
`check_mirror_file` reads a mirror file line by line first, so that a file
that would not load names its first bad line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from w2s_jax.core.errors import DataError, DataFileNotFound
from w2s_jax.data.tasks import TaskSpec

DATA_DIR_ENV = "W2S_DATA_DIR"
_HUB_HINT = (f"To read the Hugging Face hub instead, leave config.data_dir "
             f"empty and unset {DATA_DIR_ENV}.")
_MIRROR_HINT = (f"point {DATA_DIR_ENV} (or --config.data_dir) at a local "
                f"mirror laid out as <dir>/<task>/<split>.jsonl, one JSON "
                f"object per line with the hub's field names")


def resolve_data_dir(config_value: str | None) -> str | None:
    """The mirror to read: the config's value, else $W2S_DATA_DIR, else
    None, meaning the hub. An empty string counts as unset."""
    return config_value or os.environ.get(DATA_DIR_ENV) or None


def mirror_task_dir(spec: TaskSpec, data_dir: str) -> Path:
    """The task's directory in the mirror; raises if the mirror lacks it."""
    task_dir = Path(data_dir) / (spec.mirror_name or spec.name)
    if not task_dir.is_dir():
        root = Path(data_dir)
        held = (sorted(p.name for p in root.iterdir() if p.is_dir())
                if root.is_dir() else [])
        raise DataFileNotFound(
            f"task {spec.name!r} is not in the data mirror: {task_dir} does "
            f"not exist. The mirror at {root} holds: "
            f"{', '.join(held) if held else '(nothing; no such directory)'}. "
            f"{_HUB_HINT}")
    return task_dir


def available_mirror_splits(spec: TaskSpec, data_dir: str) -> list[str]:
    """Sorted split names (`<split>.jsonl` files) the mirror has for a task."""
    task_dir = mirror_task_dir(spec, data_dir)
    splits = sorted(p.stem for p in task_dir.glob("*.jsonl") if p.is_file())
    if not splits:
        present = sorted(p.name for p in task_dir.iterdir())
        raise DataFileNotFound(
            f"{task_dir} has no <split>.jsonl files for task {spec.name!r}; "
            f"it holds: {', '.join(present) if present else '(nothing)'}")
    return splits


def mirror_path(spec: TaskSpec, split: str, data_dir: str) -> Path:
    return mirror_task_dir(spec, data_dir) / f"{split}.jsonl"


def load_raw(spec: TaskSpec, split: str, data_dir: str | None) -> list[dict]:
    """All rows of one split, as dicts with the hub's field names."""
    import datasets  # heavy (pandas, pyarrow): only when reading data

    if data_dir is None:
        try:
            dataset = datasets.load_dataset(
                spec.hub_id, spec.hub_config, data_dir=spec.hub_data_dir,
                revision=spec.hub_revision, split=split)
        except Exception as err:  # the hub raises many types; all mean "not here"
            raise DataError(_hub_message(spec, split, err)) from None
        return dataset.to_list()
    path = mirror_path(spec, split, data_dir)
    if not path.is_file():
        raise DataFileNotFound(
            f"{path} does not exist; the mirror has these splits of "
            f"{spec.name!r}: {', '.join(available_mirror_splits(spec, data_dir))}")
    # A single file loads as the json builder's "train" split; naming it
    # after the mirror's file would fail for names `datasets` reserves ("all").
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    return dataset.to_list()


def hub_switched_off() -> list[str]:
    """The environment variables that switch the hub off, where set."""
    return [name for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
            if os.environ.get(name, "") not in ("", "0")]


def check_hub_dataset(spec: TaskSpec) -> None:
    """With the hub switched off, the task's dataset must be in the
    `datasets` cache: DataError naming the fixes otherwise. Reads no data;
    with the hub on, the download itself reports problems."""
    if not hub_switched_off():
        return
    import datasets

    try:
        datasets.load_dataset_builder(spec.hub_id, spec.hub_config,
                                      data_dir=spec.hub_data_dir,
                                      revision=spec.hub_revision)
    except Exception as err:  # the hub raises many types; all mean "not here"
        raise DataError(_hub_message(spec, None, err)) from None


def _hub_message(spec: TaskSpec, split: str | None, err: Exception) -> str:
    detail = (str(err).strip().splitlines() or [""])[0][:300]
    offline = hub_switched_off()
    where = (f"the hub is switched off here "
             f"({', '.join(name + '=1' for name in offline)}) and "
             f"the dataset is not in its cache" if offline else
             "the hub is unreachable or refused it")
    what = f"{spec.hub_id}, split {split!r}" if split else spec.hub_id
    if spec.hub_revision:
        what += f", revision {spec.hub_revision!r}"
    return (f"could not read task {spec.name!r} ({what}) from the Hugging "
            f"Face hub: {where} "
            f"({type(err).__name__}: {detail}). To fix: {_MIRROR_HINT}, or "
            f"run where the hub is reachable.")


def check_mirror_file(spec: TaskSpec, path: Path) -> int:
    """Reads a mirror file as the loader will, raising DataError at its
    first bad line: not JSON, not an object, or a row the task's formatter
    cannot read (a missing field, a label that is not a number). Returns
    the number of rows. Reads the file once, without keeping it."""
    rng = np.random.default_rng(0)  # the formatters' coins; not kept
    rows = 0
    try:
        f = open(path, encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    with f:
        try:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # the loader skips blank lines too
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{path}, line {number}: not valid JSON ({err.msg} at "
                        f"column {err.colno}): {_excerpt(line)}; a mirror file "
                        f"holds one JSON object per line") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}, line {number}: a JSON {type(row).__name__}, "
                        f"not an object: {_excerpt(line)}; a mirror file holds "
                        f"one JSON object per line with the hub's field names")
                _check_row(spec, row, rng, path, number)
                rows += 1
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte "
                            f"{err.start} of a line); a mirror file holds one "
                            f"JSON object per line") from None
    if not rows:
        raise DataError(
            f"{path} is empty: it holds no rows. A mirror file holds one JSON "
            f"object per line with the hub's field names; write it again")
    return rows


def _check_row(spec: TaskSpec, row: dict, rng, path: Path, number: int):
    try:
        example = spec.format_row(row, rng)
    except KeyError as err:
        raise DataError(
            f"{path}, line {number}: the row has no field {err.args[0]!r}, "
            f"which task {spec.name!r} needs; the row's fields: "
            f"{', '.join(sorted(row)) or '(none)'}") from None
    except (TypeError, ValueError, AttributeError, IndexError) as err:
        raise DataError(
            f"{path}, line {number}: task {spec.name!r} cannot read the row "
            f"({type(err).__name__}: {err}); the row: {_excerpt(json.dumps(row))}"
        ) from None
    if example is not None and example[1] not in range(spec.num_classes):
        raise DataError(
            f"{path}, line {number}: label {example[1]!r}; task "
            f"{spec.name!r} has {spec.num_classes} classes, labels must be "
            f"{_label_range(spec.num_classes)}")


def _excerpt(text: str, limit: int = 120) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _label_range(num_classes: int) -> str:
    return "0 or 1" if num_classes == 2 else f"0 to {num_classes - 1}"
