"""The result store: every finished run, appended, readable without the code.

    <workdir>/store/runs/<run id>.json   one record per run (written whole,
                                          then renamed into place)
    <workdir>/store/index.jsonl          every record, one per line, rebuilt
                                          from runs/ after each run

A record holds what reports need, from the run's results and stages alone:
task, recipe, loss, seed, the models (weakest first) with their parameter
counts, which model each stage trained, every stage's gold test metrics,
the comparisons (PGR, agreement), each stage's training loss curve, and the
whole config. `python -m w2s_jax.report` reads the index only.

Shards of a grid share one store: each writes its own run files, and the
index is rebuilt under a lock directory (mkdir is atomic on local
filesystems and NFS), so a rebuild never misses a run another process
finished before it; a lock left by a killed process expires.

With a bucket (config.store, core/object_store.py) the store is the same
two things at `<store>/runs/` and `<store>/index.jsonl`. A bucket cannot
append or rename, so the index is rewritten whole under a lock object
created only if absent: the current index, this run's record, and any run
file the index lacks (one whose process died before indexing it). A run
the index misses (its process died before indexing it, or a lock expired
at a bad moment) is added by the next publish, and the report reads such
runs from `runs/` too (report/store.py).
"""
from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import tempfile
import time
import uuid

from w2s_jax.core import distributed
from w2s_jax.models import registry

INDEX = "index.jsonl"
_LOCK_STALE_S = 300.0


def store_dir(workdir: str) -> str:
    return os.path.join(workdir, "store")


def record(results: dict, ctx, run_id: str) -> dict:
    """The store's record of one run (module docstring)."""
    stages = results["stages"]
    curves = {}
    for name, stage in stages.items():
        with open(os.path.join(ctx.workdir, stage["path"], "record.json")) as f:
            curves[name] = json.load(f).get("loss_curve", [])
    return {
        "run_id": run_id,
        "finished": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "task": results["task"], "recipe": results["recipe"],
        "loss": results["loss"], "seed": results["seed"],
        "models": results["models"],
        "model_params": {m.name: registry.param_count(m) for m in ctx.models},
        "stage_models": {name: stage["model"] for name, stage in stages.items()},
        "gold_test": results["gold_test"],
        "comparisons": results["comparisons"],
        "loss_curves": curves,
        "config": results["config"],
    }


def publish(results: dict, ctx, run_id: str) -> str:
    """Add this run to the store (process 0); returns the index's path
    (or URL, for a bucket)."""
    if ctx.store is not None:
        if distributed.is_primary():
            _publish_to_bucket(ctx.store, run_id, json.dumps(
                record(results, ctx, run_id), sort_keys=True))
        return ctx.store.url_of(INDEX)
    directory = store_dir(ctx.workdir)
    index = os.path.join(directory, INDEX)
    if not distributed.is_primary():
        return index
    runs = os.path.join(directory, "runs")
    os.makedirs(runs, exist_ok=True)
    _atomic_write(os.path.join(runs, f"{run_id}.json"),
                  json.dumps(record(results, ctx, run_id), sort_keys=True))
    with _lock(os.path.join(directory, ".index-lock")):
        lines = []
        for name in sorted(os.listdir(runs)):
            if name.endswith(".json"):
                with open(os.path.join(runs, name)) as f:
                    lines.append(json.dumps(json.load(f), sort_keys=True))
        _atomic_write(index, "".join(line + "\n" for line in lines))
    return index


def _publish_to_bucket(store, run_id: str, text: str) -> None:
    """The bucket's publish (module docstring)."""
    mine = f"{run_id}.json"
    store.write(f"runs/{mine}", text.encode())
    with _bucket_lock(store, ".index-lock"):
        old = (store.read(INDEX) or b"").decode("utf-8", errors="replace")
        lines = {}
        for line in old.splitlines():
            try:
                lines[f"{json.loads(line)['run_id']}.json"] = line
            except (ValueError, KeyError, TypeError):
                continue  # cut short by a crash: its run file is re-read
        for name in store.names("runs"):
            if name.endswith(".json") and (name == mine or name not in lines):
                found = store.read(f"runs/{name}")
                if found is not None:
                    lines[name] = json.dumps(json.loads(found), sort_keys=True)
        store.write(INDEX, "".join(lines[name] + "\n"
                                   for name in sorted(lines)).encode())


class _bucket_lock:
    """The bucket's version of `_lock`: an object created only if absent,
    holding its owner's token and time; one older than _LOCK_STALE_S
    belongs to a process that died holding it. Polled every half second or
    so (GCS allows about one write a second to one object)."""

    def __init__(self, store, name: str):
        self.store, self.name = store, name
        self.token = uuid.uuid4().hex

    def _held(self) -> dict:
        try:
            return json.loads(self.store.read(self.name))
        except (TypeError, ValueError):
            return {}  # released while looking

    def __enter__(self):
        while not self.store.create(self.name, json.dumps(
                {"token": self.token, "time": time.time()}).encode()):
            held = self._held()
            if held.get("token") == self.token:
                break  # our create, retried by the client after a lost reply
            if time.time() - float(held.get("time", time.time())) > _LOCK_STALE_S:
                self.store.delete(self.name)
            time.sleep(0.4 + 0.2 * random.random())
        return self

    def __exit__(self, *exc):
        # Only while it is still ours: a waiter may have judged it stale.
        if self._held().get("token") == self.token:
            self.store.delete(self.name)


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path),
                               prefix=f".{os.path.basename(path)}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class _lock:
    """A lock directory holding its owner's token: created atomically,
    removed on exit by its owner only; one older than _LOCK_STALE_S belongs
    to a process that died holding it (a rebuild takes well under a
    second per thousand runs)."""

    def __init__(self, path: str):
        self.path = path
        self.token = os.path.join(path, uuid.uuid4().hex)

    def __enter__(self):
        while True:
            try:
                os.mkdir(self.path)
                open(self.token, "w").close()
                return self
            except FileExistsError:
                try:
                    age = time.time() - os.stat(self.path).st_mtime
                except FileNotFoundError:
                    continue  # released while looking
                if age > _LOCK_STALE_S:
                    shutil.rmtree(self.path, ignore_errors=True)
                time.sleep(0.05)

    def __exit__(self, *exc):
        # Only while it is still ours: a waiter may have judged it stale.
        if os.path.exists(self.token):
            shutil.rmtree(self.path, ignore_errors=True)
