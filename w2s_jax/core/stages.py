"""A cache of finished stages, keyed by everything that determines them.

A stage's key is the hash of its full specification (model, training
settings, loss, and a fingerprint of the exact examples and targets it
trains and predicts on). A finished stage lives in
`<workdir>/stages/<name>-<key>/` with `record.json` (the specification,
metrics and timings) and `arrays.npz` (its predictions). The directory is
written under a temporary name and renamed when complete, so a crash never
leaves a half-written stage that a rerun would mistake for a finished one;
a rerun with the same key loads it instead of retraining. An unfinished
stage keeps its checkpoints in `<workdir>/stages/.inprogress-<name>-<key>/`,
where a rerun of the same command resumes from them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np

from w2s_jax.core import distributed
from w2s_jax.core.progress import log

# Bump when the meaning of stored outputs changes, so old stages are not reused.
FORMAT_VERSION = 1


@dataclasses.dataclass
class StageResult:
    name: str
    key: str
    path: str
    record: dict
    arrays: dict[str, np.ndarray]
    reused: bool


def fingerprint(*arrays_or_texts) -> str:
    """A short hash of example texts/ids/targets, for stage keys."""
    digest = hashlib.sha256()
    for item in arrays_or_texts:
        if isinstance(item, np.ndarray):
            digest.update(str((item.dtype, item.shape)).encode())
            digest.update(np.ascontiguousarray(item).tobytes())
        else:
            digest.update(json.dumps(item, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def stage_key(spec: dict) -> str:
    payload = json.dumps({"format": FORMAT_VERSION, **spec}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_stage(workdir: str, name: str, spec: dict,
              compute: Callable[[str], tuple[dict, dict[str, np.ndarray]]]
              ) -> StageResult:
    """Load the finished stage for `spec`, or compute and store it.

    `compute(inprogress_dir)` may keep resumable state (checkpoints) in
    `inprogress_dir`, which is named by the stage key, so a rerun of an
    interrupted stage finds it; it is deleted once the stage is stored.
    Every process of a multi-host run calls this; only process 0 writes.
    """
    key = stage_key(spec)
    stages_dir = os.path.join(workdir, "stages")
    path = os.path.join(stages_dir, f"{name}-{key}")
    inprogress = os.path.join(stages_dir, f".inprogress-{name}-{key}")
    # No process may look for the stage while process 0 could still be
    # writing it, or they would disagree on whether to compute it.
    distributed.barrier(f"look up stage {name}-{key}")
    if os.path.exists(os.path.join(path, "record.json")):
        log(f"[{name}] reusing finished stage {path}")
        if distributed.is_primary():
            # Left behind if a run died between storing the stage and this.
            shutil.rmtree(inprogress, ignore_errors=True)
        return _load(name, key, path, reused=True)

    record, arrays = compute(inprogress)
    record = {"stage": name, "key": key, "spec": spec, **record}
    if distributed.is_primary():
        _store(path, record, arrays)
        shutil.rmtree(inprogress, ignore_errors=True)
        log(f"[{name}] stage written to {path}")
    distributed.barrier(f"stored stage {name}-{key}")
    # Return what a reuse would return, so both paths give identical results.
    return _load(name, key, path, reused=False)


def _store(path: str, record: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write the stage under a temporary name, then rename it into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}-",
                           dir=os.path.dirname(path))
    try:
        np.savez(os.path.join(tmp, "arrays.npz"), **arrays)
        with open(os.path.join(tmp, "record.json"), "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(name: str, key: str, path: str, reused: bool) -> StageResult:
    with open(os.path.join(path, "record.json")) as f:
        record = json.load(f)
    with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return StageResult(name, key, path, record, arrays, reused=reused)
