"""Finished stages and their claims in a bucket (config.store), for shards
on machines that share the bucket but not the workdir.

The protocol is core/stages.py's, with objects in place of directories:

    stages/<name>-<key>/arrays-<tag>.npz    a finished stage's files, each
                       /record-<tag>.json   process's under its own tag
                       /done.json           {file: tagged name}, created
                                            only if absent: its presence
                                            means finished, and of two
                                            processes storing the same
                                            stage exactly one names its
                                            files (no reader mixes one's
                                            record with the other's arrays)
    claims/<name>-<key>/<n>.owner.json      claim generation n, created only
                       /<n>.heartbeat       if absent (the server decides
                       /<n>.released        which of two creators wins)

The workdir keeps a copy of every stage it used, marked with the done.json
it copies (`stored-as.json`), so it is always the bucket's own copy: a
stage this process computed but another stored first is replaced by the
stored one, and one finished in the workdir before it used the bucket is
uploaded. In-progress directories (checkpoints) stay in the workdir: an
owner on the same machine resumes from its predecessor's checkpoints, one
on another machine starts the stage afresh. Heartbeats carry the owner's
clock, so hosts' clocks must agree to well within the stale limit, as with
a shared filesystem.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid

from w2s_jax.core import stages
from w2s_jax.core.object_store import ObjectStore, transient_errors
from w2s_jax.core.progress import log

STAGE_FILES = ("arrays.npz", "record.json")
DONE = "done.json"
MARK = "stored-as.json"  # in the workdir's copy: the done.json it copies
# Seconds between a waiter's looks at a bucket: each look is several
# requests, and a grid's shards do not wait (stages.no_waiting) anyway.
BUCKET_POLL_S = 5.0


class BucketClaims:
    """Claims as objects (module docstring), with stages.LocalClaims'
    methods; in-progress directories stay in the local `stages_dir`."""

    TRANSIENT = transient_errors()  # `acquire` looks again after these
    MIN_POLL_S = BUCKET_POLL_S

    def __init__(self, store: ObjectStore, stages_dir: str):
        self.store, self.stages_dir = store, stages_dir

    def _object(self, stage_id: str, gen: int, kind: str) -> str:
        return f"claims/{stage_id}/{gen}.{kind}"

    def finished(self, stage_id: str) -> bool:
        """Stored in the bucket, or in the workdir (then `sync` uploads it)."""
        return (stages.is_finished(os.path.join(self.stages_dir, stage_id))
                or self.store.exists(f"stages/{stage_id}/{DONE}"))

    def generations(self, stage_id: str) -> list[int]:
        gens = (name.split(".", 1)[0]
                for name in self.store.names(f"claims/{stage_id}")
                if name.endswith(f".{stages.OWNER}"))
        return sorted(int(g) for g in gens if g.isdigit())

    def create(self, stage_id: str, gen: int, owner: dict) -> bool:
        text = json.dumps(owner, indent=1, sort_keys=True).encode()
        if self.store.create(self._object(stage_id, gen, stages.OWNER), text):
            return True
        # Taken; or our own upload, retried by the client after a lost
        # reply: the token tells.
        return _token(self.store.read(self._object(
            stage_id, gen, stages.OWNER))) == owner["token"]

    def read_holder(self, stage_id: str, gen: int) -> stages.Holder | None:
        text = self.store.read(self._object(stage_id, gen, stages.OWNER))
        if text is None:
            return None  # removed: the stage was stored
        try:
            owner = json.loads(text)
        except ValueError:
            owner = {}
        beat = self.store.read(self._object(stage_id, gen, stages.HEARTBEAT))
        try:
            heartbeat = float(beat)
        except (TypeError, ValueError):
            heartbeat = owner.get("started", time.time())
        released = self.store.exists(self._object(stage_id, gen,
                                                  stages.RELEASED))
        return stages.Holder(stage_id, gen, owner, heartbeat, released=released)

    def beat(self, stage_id: str, gen: int) -> None:
        self.store.write(self._object(stage_id, gen, stages.HEARTBEAT),
                         repr(time.time()).encode())

    def mark_released(self, stage_id: str, gen: int) -> None:
        self.store.write(self._object(stage_id, gen, stages.RELEASED),
                         b"released\n")

    def remove_generation(self, stage_id: str, gen: int) -> None:
        for kind in (stages.HEARTBEAT, stages.RELEASED, stages.OWNER):
            self.store.delete(self._object(stage_id, gen, kind))

    def remove(self, stage_id: str) -> None:
        """Every claim object of a stored stage, and its local in-progress
        directories."""
        for name in self.store.names(f"claims/{stage_id}"):
            self.store.delete(f"claims/{stage_id}/{name}")
        stages.LocalClaims(self.stages_dir).remove(stage_id)


class BucketStages:
    """What stages.run_stage does with a bucket: its claims, and keeping
    the workdir's copy of a finished stage the bucket's own."""

    def __init__(self, store: ObjectStore, stages_dir: str):
        self.store = store
        self.claims = BucketClaims(store, stages_dir)

    def url(self, stage_id: str) -> str:
        return self.store.url_of(f"stages/{stage_id}")

    def sync(self, name: str, stage_id: str, path: str) -> None:
        """Make the workdir's copy at `path` of a finished stage the
        bucket's: fetched if missing or another's, uploaded if the bucket
        lacks the stage (finished here before the bucket was used)."""
        done = self.store.read(f"stages/{stage_id}/{DONE}")
        if done is None and self.publish(stage_id, path):
            log(f"[{name}] stage {path} copied to {self.url(stage_id)}")
            return
        if done is not None and _read_mark(path) == done:
            return
        log(f"[{name}] copying finished stage {self.url(stage_id)} to {path}")
        self._replace_local(stage_id, path)

    def publish(self, stage_id: str, path: str) -> bool:
        """Upload the stage at `path`, computed here. False if another
        process stored it first: then `path` becomes that stored copy."""
        if not self.store.exists(f"stages/{stage_id}/{DONE}"):
            tag = uuid.uuid4().hex[:12]
            names = {}
            for name in STAGE_FILES:
                stem, ext = os.path.splitext(name)
                names[name] = f"{stem}-{tag}{ext}"
                self.store.upload(os.path.join(path, name),
                                  f"stages/{stage_id}/{names[name]}")
            done = json.dumps(names, sort_keys=True).encode()
            # A create retried after a lost reply finds its own done.json.
            if (self.store.create(f"stages/{stage_id}/{DONE}", done)
                    or self.store.read(f"stages/{stage_id}/{DONE}") == done):
                _write_mark(path, done)
                return True
            for tagged in names.values():
                self.store.delete(f"stages/{stage_id}/{tagged}")
        self._replace_local(stage_id, path)
        return False

    def _replace_local(self, stage_id: str, path: str) -> None:
        """The bucket's copy of the stage into `path`, written whole and
        renamed into place, replacing what was there."""
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{stage_id}-", dir=parent)
        try:
            done = self.store.read(f"stages/{stage_id}/{DONE}")
            names = json.loads(done)
            for name in STAGE_FILES:
                self.store.download(f"stages/{stage_id}/{names[name]}",
                                    os.path.join(tmp, name))
            _write_mark(tmp, done)
            if os.path.isdir(path):
                old = tempfile.mkdtemp(prefix=f".{stage_id}-old-", dir=parent)
                os.rename(path, os.path.join(old, "stage"))
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _token(text: bytes | None) -> str | None:
    try:
        return json.loads(text).get("token")
    except (TypeError, ValueError, AttributeError):
        return None


def _read_mark(path: str) -> bytes | None:
    try:
        with open(os.path.join(path, MARK), "rb") as f:
            return f.read()
    except OSError:
        return None


def _write_mark(path: str, done: bytes) -> None:
    with open(os.path.join(path, MARK), "wb") as f:
        f.write(done)
