"""Raw rows of a task, from a local mirror or from the Hugging Face hub.

A mirror is laid out as `<data_dir>/<task name>/<split>.jsonl`, with the
hub's field names, so the same formatter reads either source. Both go
through `datasets.load_dataset`, which caches the parsed JSON as Arrow.
"""
from __future__ import annotations

import os
from pathlib import Path

import datasets

from w2s_jax.data.tasks import TaskSpec

DATA_DIR_ENV = "W2S_DATA_DIR"
_HUB_HINT = (f"To read the Hugging Face hub instead, leave config.data_dir "
             f"empty and unset {DATA_DIR_ENV}.")


def resolve_data_dir(config_value: str | None) -> str | None:
    """The mirror to read: the config's value, else $W2S_DATA_DIR, else
    None, meaning the hub. An empty string counts as unset."""
    return config_value or os.environ.get(DATA_DIR_ENV) or None


def mirror_task_dir(spec: TaskSpec, data_dir: str) -> Path:
    """The task's directory in the mirror; raises if the mirror lacks it."""
    task_dir = Path(data_dir) / spec.name
    if not task_dir.is_dir():
        root = Path(data_dir)
        held = (sorted(p.name for p in root.iterdir() if p.is_dir())
                if root.is_dir() else [])
        raise FileNotFoundError(
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
        raise FileNotFoundError(
            f"{task_dir} has no <split>.jsonl files for task {spec.name!r}; "
            f"it holds: {', '.join(present) if present else '(nothing)'}")
    return splits


def mirror_path(spec: TaskSpec, split: str, data_dir: str) -> Path:
    return mirror_task_dir(spec, data_dir) / f"{split}.jsonl"


def load_raw(spec: TaskSpec, split: str, data_dir: str | None) -> list[dict]:
    """All rows of one split, as dicts with the hub's field names."""
    if data_dir is None:
        dataset = datasets.load_dataset(spec.hub_id, spec.hub_config,
                                        data_dir=spec.hub_data_dir, split=split)
        return dataset.to_list()
    path = mirror_path(spec, split, data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; the mirror has these splits of "
            f"{spec.name!r}: {', '.join(available_mirror_splits(spec, data_dir))}")
    # A single file loads as the json builder's "train" split; naming it
    # after the mirror's file would fail for names `datasets` reserves ("all").
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    return dataset.to_list()
