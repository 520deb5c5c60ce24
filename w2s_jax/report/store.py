"""Reads the result store: `<workdir>/store/index.jsonl`, one run a line,
or `<store>/index.jsonl` in a bucket (config.store, a gs:// URL).

Runs append their record when they finish, so a line may be cut short by a
crash or hold a record from another version; such lines are skipped and
counted (a report from the rest beats none). Should a run_id appear twice,
its later line wins: one run is one record.
"""
from __future__ import annotations

import json
import logging
import os

from w2s_jax.core import errors, object_store

logger = logging.getLogger(__name__)

INDEX = os.path.join("store", "index.jsonl")
# Fields the report reads; a record without them cannot be placed anywhere.
REQUIRED = ("task", "recipe", "loss", "seed", "models", "gold_test")


def is_bucket(where: str) -> bool:
    return "://" in where


def index_path(where: str) -> str:
    """The index of a workdir's store, or of a bucket store's URL."""
    if is_bucket(where):
        return f"{where.rstrip('/')}/{os.path.basename(INDEX)}"
    return os.path.join(where, INDEX)


def _make_one(where: str) -> str:
    place = (f"--config.store={where}" if is_bucket(where)
             else f"--workdir={where}")
    return (f"finished runs add to it: python -m w2s_jax.main "
            f"--config=configs/<config>.py {place}")


def _index_text(where: str) -> str | None:
    """The index's lines; for a bucket, with a line for every run file the
    index lacks (a shard that died between writing its run and indexing
    it, with no later publish to add it)."""
    if not is_bucket(where):
        if not os.path.isfile(index_path(where)):
            return None
        with open(index_path(where), encoding="utf-8", errors="replace") as f:
            return f.read()
    bucket = object_store.ObjectStore(where)
    data = bucket.read(os.path.basename(INDEX))
    if data is None:
        return None
    text = data.decode("utf-8", errors="replace")
    indexed = set()
    for line in text.splitlines():
        record = _parse(line)
        if record is not None:
            indexed.add(f"{record.get('run_id')}.json")
    missing = [f"runs/{name}" for name in bucket.names("runs")
               if name.endswith(".json") and name not in indexed]
    # A run file is one line of JSON (publish.py); a bad one is skipped and
    # counted like a bad index line.
    extra = (bucket.read(name) for name in missing)
    return text + "".join(found.decode("utf-8", errors="replace").strip()
                          + "\n" for found in extra if found)


def read_store(where: str) -> tuple[list[dict], int]:
    """The store's run records (the last per run_id, in file order) and the
    number of lines skipped as unreadable. `where` is a workdir, or a
    bucket store's URL."""
    path = index_path(where)
    text = _index_text(where)
    if text is None:
        raise errors.DataFileNotFound(
            f"no result store at {path}; {_make_one(where)}")
    by_id: dict[str, dict] = {}
    skipped = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            skipped += 1
            if skipped == 1:
                first_bad = number
            continue
        run_id = record.get("run_id", f"line {number}")
        by_id.pop(run_id, None)  # a rerun moves to its latest position
        by_id[run_id] = record
    if skipped:
        logger.warning("skipped %d unreadable line(s) of %s (the first is "
                       "line %d)", skipped, path, first_bad)
    if not by_id:
        raise errors.DataError(
            f"the result store {path} holds no readable runs; "
            f"{_make_one(where)}")
    return list(by_id.values()), skipped


def _parse(line: str) -> dict | None:
    """A record with the fields the report needs, else None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
        return None
    if not (isinstance(record["models"], list) and record["models"]
            and isinstance(record["gold_test"], dict)):
        return None
    return record
