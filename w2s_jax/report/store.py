"""Reads the result store: `<workdir>/store/index.jsonl`, one run a line.

Runs append their record when they finish, so a line may be cut short by a
crash or hold a record from another version; such lines are skipped and
counted (a report from the rest beats none). Should a run_id appear twice,
its later line wins: one run is one record.
"""
from __future__ import annotations

import json
import logging
import os

from w2s_jax.core import errors

logger = logging.getLogger(__name__)

INDEX = os.path.join("store", "index.jsonl")
# Fields the report reads; a record without them cannot be placed anywhere.
REQUIRED = ("task", "recipe", "loss", "seed", "models", "gold_test")


def index_path(workdir: str) -> str:
    return os.path.join(workdir, INDEX)


def _make_one(workdir: str) -> str:
    return (f"finished runs add to it: python -m w2s_jax.main "
            f"--config=configs/<config>.py --workdir={workdir}")


def read_store(workdir: str) -> tuple[list[dict], int]:
    """The store's run records (the last per run_id, in file order) and the
    number of lines skipped as unreadable."""
    path = index_path(workdir)
    if not os.path.isfile(path):
        raise errors.DataFileNotFound(
            f"no result store at {path}; {_make_one(workdir)}")
    by_id: dict[str, dict] = {}
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
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
            f"{_make_one(workdir)}")
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
