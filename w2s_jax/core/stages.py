"""A cache of finished stages, keyed by everything that determines them,
and claims that let several processes share one workdir.

A stage's key is the hash of its full specification (model, training
settings, loss, and a fingerprint of the exact examples and targets it
trains and predicts on). A finished stage lives in
`<workdir>/stages/<name>-<key>/` with `record.json` (the specification,
metrics and timings) and `arrays.npz` (its predictions). The directory is
written under a temporary name and renamed when complete, so a crash never
leaves a half-written stage that a rerun would mistake for a finished one;
a rerun with the same key loads it instead of retraining.

Claims. A stage being computed is claimed, so that two processes (two
identical commands, or the jobs of a grid) never compute it twice:

    stages/.claim-<name>-<key>.<n>/       claim generation n: owner.json
                                          (host, pid, start time, token),
                                          heartbeat (the owner's clock,
                                          rewritten every heartbeat_s),
                                          released (left by an owner that
                                          stopped without finishing)
    stages/.inprogress-<name>-<key>.<n>/  that owner's resumable state
                                          (checkpoints, evaluations)

The current claim is the one with the highest n. A claim is created whole
(written under a temporary name, then renamed to its generation's name);
renaming a directory onto an existing, non-empty one fails, so of two
processes creating the same generation exactly one succeeds. A process that
needs a claimed stage waits, printing who holds it, and reuses the stage
when it appears. It takes the claim over when the owner is gone: released,
its process no longer exists (same machine), or its heartbeat is older than
`stale_after_s` (any machine, so hosts' clocks must agree to well within
it). Taking over is creating generation n+1, atomic in the same way, so of
two waiters exactly one wins; the winner then renames the newest older
in-progress directory to its own generation's name (one rename), so it
resumes from the previous owner's checkpoints, while an owner wrongly
judged gone (a hung process) would write under its own old path, never
into the new owner's directory. Generations are removed only once the
stage is stored, so their numbers never repeat while it is unfinished; a
stored stage wins over any claim, so a process killed between storing and
cleaning up blocks nobody.

Relied on: rename(2) of a directory is atomic and fails when the target is
a non-empty directory (a claim is never empty). This holds on local
filesystems and on NFS v3+, where the server performs the rename (a retried
rename whose first reply was lost is recognised by reading back the
token). NFS clients cache directory listings (up to acdirmax, 60 s by
default), which only delays when a waiter notices a change. gcsfuse and
other object-store mounts do not rename directories atomically: claims are
not safe there. For a bucket, `run_stage(..., store=)` keeps claims and
finished stages as objects instead (core/bucket_stages.py), relying on
GCS's create-only-if-absent in place of the rename.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from w2s_jax.core import distributed
from w2s_jax.core.object_store import ObjectStore
from w2s_jax.core.progress import format_duration, log

# Bump when the meaning of stored outputs changes, so old stages are not reused.
FORMAT_VERSION = 1

# Seconds without a heartbeat after which a claim is judged abandoned.
ENV_STALE_AFTER = "W2S_CLAIM_STALE_S"
DEFAULT_STALE_AFTER_S = 600.0


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


def keyed_spec(spec: dict) -> dict:
    """`spec` with, where a run sets one (config.matmul_precision), JAX's
    default matmul precision, which changes every output: what a stage's
    key hashes and its record stores."""
    precision = jax.config.jax_default_matmul_precision
    if precision is None:
        return spec
    return {**spec, "matmul_precision": str(precision)}


def stage_key(spec: dict) -> str:
    payload = json.dumps({"format": FORMAT_VERSION, **keyed_spec(spec)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_stage(workdir: str, name: str, spec: dict,
              compute: Callable[[str], tuple[dict, dict[str, np.ndarray]]],
              timing: ClaimTiming | None = None,
              store: ObjectStore | None = None) -> StageResult:
    """Load the finished stage for `spec`, or claim, compute and store it.

    `compute(inprogress_dir)` may keep resumable state (checkpoints) in
    `inprogress_dir`, which belongs to this process's claim and holds what
    an earlier, interrupted owner left there; it is deleted once the stage
    is stored. If another process is computing the stage, this waits for it
    and reuses its result (see `acquire`). Every process of a multi-host run
    calls this; only process 0 writes.

    With a `store` (a bucket shared by machines that do not share the
    workdir; core/bucket_stages.py), claims and finished stages live in the
    bucket, and the workdir keeps a copy of every stage this process used,
    always the bucket's own.
    """
    key = stage_key(spec)
    stages_dir = os.path.join(workdir, "stages")
    stage_id = f"{name}-{key}"
    path = os.path.join(stages_dir, stage_id)
    bucket = None
    if store is not None:
        from w2s_jax.core import bucket_stages  # it builds on this module
        bucket = bucket_stages.BucketStages(store, stages_dir)
    claims = LocalClaims(stages_dir) if bucket is None else bucket.claims
    claim = acquire(claims, name, key, timing)
    if claim is None:
        if bucket is not None:
            if distributed.is_primary():
                bucket.sync(name, stage_id, path)
            distributed.barrier(f"fetched stage {stage_id}")
        log(f"[{name}] reusing finished stage {path}")
        if distributed.is_primary():
            # Left behind if a run died between storing the stage and this.
            claims.remove(stage_id)
        return _load(name, key, path, reused=True)

    try:
        record, arrays = compute(claim.work_dir)
        record = {"stage": name, "key": key, "spec": keyed_spec(spec), **record}
        stored = distributed.is_primary() and _store(path, record, arrays)
        if bucket is not None and distributed.is_primary():
            stored = bucket.publish(stage_id, path)
    except BaseException:
        claim.release(finished=False)
        raise
    claim.release(finished=True)
    where_to = path if bucket is None else bucket.url(stage_id)
    if stored:
        log(f"[{name}] stage written to {where_to}")
    elif distributed.is_primary():
        log(f"[{name}] another process stored this stage first; using its "
            f"copy {where_to}")
    distributed.barrier(f"stored stage {stage_id}")
    # Return what a reuse would return, so both paths give identical results.
    return _load(name, key, path, reused=False)


def _store(path: str, record: dict, arrays: dict[str, np.ndarray]) -> bool:
    """Write the stage under a temporary name, then rename it into place.
    False if another process stored it first (an owner judged gone that
    was not); the two are identical, and the first one stays."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}-",
                           dir=os.path.dirname(path))
    try:
        np.savez(os.path.join(tmp, "arrays.npz"), **arrays)
        with open(os.path.join(tmp, "record.json"), "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_finished(path):
            return False
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _load(name: str, key: str, path: str, reused: bool) -> StageResult:
    with open(os.path.join(path, "record.json")) as f:
        record = json.load(f)
    with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return StageResult(name, key, path, record, arrays, reused=reused)


def is_finished(path: str) -> bool:
    return os.path.exists(os.path.join(path, "record.json"))


# Claims ----------------------------------------------------------------------
#
# API: `acquire` (wait for a stage or claim it; every process of a job calls
# it), `try_claim` (one attempt that never waits: a `Claim`, a `Holder`, or
# FINISHED), `Claim.release` and `holder` (who computes a stage now), over
# a stages directory (LocalClaims) or a bucket (bucket_stages.BucketClaims).
# A grid of jobs sharing one workdir needs nothing else.

FINISHED = "finished"
# A claim's parts (files in a claim directory; objects' suffixes in a bucket).
OWNER, HEARTBEAT, RELEASED = "owner.json", "heartbeat", "released"


@dataclasses.dataclass(frozen=True)
class ClaimTiming:
    """How claims are kept alive and judged abandoned (seconds)."""
    stale_after_s: float = DEFAULT_STALE_AFTER_S  # heartbeat older: abandoned
    heartbeat_s: float = 30.0  # how often an owner refreshes its heartbeat
    poll_s: float = 1.0  # how often a waiter looks again
    report_every_s: float = 60.0  # how often a waiter says it still waits

    @classmethod
    def from_env(cls) -> "ClaimTiming":
        """Defaults, with stale_after_s from $W2S_CLAIM_STALE_S if set."""
        text = os.environ.get(ENV_STALE_AFTER)
        if text is None:
            return cls()
        try:
            stale = float(text)
        except ValueError:
            stale = -1.0
        if not stale > 0:
            raise ValueError(f"${ENV_STALE_AFTER}={text!r} must be a positive "
                             f"number of seconds (default "
                             f"{DEFAULT_STALE_AFTER_S:g})")
        return cls(stale_after_s=stale, heartbeat_s=min(30.0, stale / 5))


@dataclasses.dataclass
class Holder:
    """The owner of a stage's current claim, as another process sees it."""
    stage_id: str
    gen: int
    owner: dict  # what the owner wrote in owner.json ({} if unreadable)
    heartbeat: float  # the owner's last heartbeat (its clock, epoch seconds)
    released: bool

    def describe(self) -> str:
        o = self.owner
        who = (f"pid {o['pid']} on {o['host']}" if "pid" in o
               else "an unknown process")
        since = (time.strftime("claimed %Y-%m-%d %H:%M:%S, ",
                               time.localtime(o["started"]))
                 if "started" in o else "")
        age = format_duration(max(0.0, time.time() - self.heartbeat))
        return f"{who} ({since}last heartbeat {age} ago)"

    def stale_reason(self, stale_after_s: float) -> str | None:
        """Why the claim may be taken over, or None while its owner lives."""
        if self.released:
            return "its owner stopped without finishing it"
        alive = _owner_alive(self.owner)
        if alive is False:
            return f"process {self.owner['pid']} no longer exists"
        age = time.time() - self.heartbeat
        if age > stale_after_s:
            return (f"no heartbeat for {format_duration(age)} (more than "
                    f"{format_duration(stale_after_s)})")
        return None


class Claim:
    """This job's claim on a stage: compute into `work_dir`, then release."""

    def __init__(self, claims, stage_id: str,
                 gen: int, owner: dict | None, timing: ClaimTiming):
        self.claims, self.stage_id, self.gen = claims, stage_id, gen
        self.owner = owner  # None in processes other than the writing one
        self.timing = timing
        self.work_dir = _work_path(claims.stages_dir, stage_id, gen)
        self._stop = threading.Event()
        self._thread = None

    def release(self, finished: bool) -> None:
        """Finished (the stage is stored): remove every claim and in-progress
        directory of the stage. Not finished: mark the claim released, so
        the next process takes it over at once, keeping the in-progress
        directory to resume from."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.owner is None:
            return
        # Best effort: a failure here must not replace the exception being
        # handled (a preemption, a failed compute) nor fail a stored stage.
        try:
            if finished:
                self.claims.remove(self.stage_id)
            else:
                self.claims.mark_released(self.stage_id, self.gen)
        except Exception as err:  # a bucket raises HTTP errors, not OSError
            log(f"[{self.stage_id.rsplit('-', 1)[0]}] warning: could not "
                f"{'remove' if finished else 'release'} the claim on stage "
                f"{self.stage_id} ({type(err).__name__}: {err}); others take "
                f"it over once its heartbeat is stale")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"claim-{self.stage_id}")
        self._thread.start()

    def _beat(self) -> None:
        warned = False
        name = self.stage_id.rsplit("-", 1)[0]
        while not self._stop.wait(self.timing.heartbeat_s):
            try:
                self.claims.beat(self.stage_id, self.gen)
                newer = [g for g in self.claims.generations(self.stage_id)
                         if g > self.gen]
                taker = (holder(self.claims, self.stage_id)
                         if newer and not warned else None)
            except Exception:
                # Removed once the stage was stored; or a filesystem or
                # network hiccup (a bucket raises HTTP errors, not OSError),
                # after which the next beat tries again: this thread must
                # outlive it, or the claim would go stale.
                continue
            if newer and not warned:
                warned = True
                log(f"[{name}] warning: the claim on stage {self.stage_id} "
                    f"was taken over by "
                    f"{taker.describe() if taker else 'another process'}; "
                    f"this process carries on, and the first to finish "
                    f"stores the stage")


class StageBusy(Exception):
    """A stage another process is computing, raised instead of waiting
    under `no_waiting` (a grid moves on to other runs and comes back)."""

    def __init__(self, stage_id: str, holder: str):
        super().__init__(f"stage {stage_id} is being computed by {holder}")
        self.stage_id = stage_id


# [False] inside `no_waiting`: a list, so the flag is shared and mutable.
_WAITING = [True]


@contextlib.contextmanager
def no_waiting():
    """Within it, `acquire` raises StageBusy where it would wait."""
    _WAITING[0] = False
    try:
        yield
    finally:
        _WAITING[0] = True


def acquire(where, name: str, key: str,
            timing: ClaimTiming | None = None) -> Claim | None:
    """Wait until stage `<name>-<key>` is finished (None) or this job holds
    its claim (a Claim: compute, then `release`); under `no_waiting`,
    raise StageBusy instead of waiting.

    `where` is a local stages directory, or claims with LocalClaims' methods
    (bucket_stages.BucketClaims).
    Collective: every process of a multi-host job calls it; process 0 does
    the filesystem work and, at every poll, tells the others its outcome, so
    all of them wait, reuse or compute together.
    """
    claims = _claims(where)
    timing = timing or ClaimTiming.from_env()
    stage_id = f"{name}-{key}"
    waiting_since = last_report = failing_since = None
    while True:
        outcome = None
        if distributed.is_primary():
            try:
                outcome = try_claim(claims, name, key, timing)
                failing_since = None
            except claims.TRANSIENT as err:
                # A bucket's hiccup (its client has retried already): look
                # again at the next poll, for as long as a claim stays live.
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log(f"[{name}] warning: the store failed while looking "
                        f"at stage {stage_id} ({type(err).__name__}: {err}); "
                        f"trying again")
                elif now - failing_since > timing.stale_after_s:
                    raise
        code, gen = _agree(outcome)
        if code == _CODE_FINISHED:
            if waiting_since is not None:
                log(f"[{name}] stage {stage_id} was finished by the process "
                    f"that held it; waited "
                    f"{format_duration(time.monotonic() - waiting_since)}")
            return None
        if code == _CODE_CLAIMED:
            if isinstance(outcome, Claim):
                return outcome
            return Claim(claims, stage_id, gen, None, timing)
        if not _WAITING[0]:
            raise StageBusy(stage_id, outcome.describe()
                            if isinstance(outcome, Holder) else "another process")
        now = time.monotonic()
        if isinstance(outcome, Holder):
            if waiting_since is None:
                waiting_since = last_report = now
                log(f"[{name}] waiting for stage {stage_id}, claimed by "
                    f"{outcome.describe()}; this run reuses it once stored, "
                    f"or takes it over if that process stops")
            elif now - last_report >= timing.report_every_s:
                last_report = now
                log(f"[{name}] still waiting "
                    f"({format_duration(now - waiting_since)}) for stage "
                    f"{stage_id}, held by {outcome.describe()}")
        time.sleep(max(timing.poll_s, claims.MIN_POLL_S))


def try_claim(where, name: str, key: str,
              timing: ClaimTiming | None = None):
    """One attempt, never waiting: FINISHED if the stage is stored, a Claim
    if this process now holds it (its heartbeat running), else the Holder
    of the live claim (or None if the claim changed hands while looking:
    try again). Single process: the caller writes."""
    claims = _claims(where)
    timing = timing or ClaimTiming.from_env()
    stage_id = f"{name}-{key}"
    if claims.finished(stage_id):
        return FINISHED
    os.makedirs(claims.stages_dir, exist_ok=True)
    gens = claims.generations(stage_id)
    taking_over = None
    if gens:
        current = claims.read_holder(stage_id, gens[-1])
        if current is None:
            return None
        reason = current.stale_reason(timing.stale_after_s)
        if reason is None:
            return current
        taking_over = current, reason
    gen = gens[-1] + 1 if gens else 0
    owner = _identity(gen)
    if taking_over:
        owner["took_over"] = {"gen": taking_over[0].gen,
                              "owner": taking_over[0].owner,
                              "reason": taking_over[1]}
    if not claims.create(stage_id, gen, owner):
        return claims.read_holder(stage_id, gen)
    claim = Claim(claims, stage_id, gen, owner, timing)
    if claims.finished(stage_id):
        # Stored between our look and our claim.
        claims.remove_generation(stage_id, gen)
        return FINISHED
    if taking_over:
        log(f"[{name}] taking over stage {stage_id} from "
            f"{taking_over[0].describe()}: {taking_over[1]}")
    try:
        _adopt_work_dir(claims.stages_dir, stage_id, gen)
    except BaseException:
        claim.release(finished=False)
        raise
    claim._start_heartbeat()
    return claim


def holder(where, stage_id: str) -> Holder | None:
    """Who holds stage `<name>-<key>`'s claim now, if anyone."""
    claims = _claims(where)
    gens = claims.generations(stage_id)
    return claims.read_holder(stage_id, gens[-1]) if gens else None


class LocalClaims:
    """Claims as directories beside the stages (module docstring)."""

    TRANSIENT = ()  # errors `acquire` retries: none, a local error is real
    MIN_POLL_S = 0.0  # a waiter looks every ClaimTiming.poll_s

    def __init__(self, stages_dir: str):
        self.stages_dir = stages_dir

    def finished(self, stage_id: str) -> bool:
        return is_finished(os.path.join(self.stages_dir, stage_id))

    def generations(self, stage_id: str) -> list[int]:
        return _generations(self.stages_dir, stage_id)

    def create(self, stage_id: str, gen: int, owner: dict) -> bool:
        return _create_claim(self.stages_dir, stage_id, gen, owner)

    def read_holder(self, stage_id: str, gen: int) -> Holder | None:
        return _read_holder(self.stages_dir, stage_id, gen)

    def beat(self, stage_id: str, gen: int) -> None:
        _write_atomic(os.path.join(_claim_path(self.stages_dir, stage_id, gen),
                                   HEARTBEAT), repr(time.time()))

    def mark_released(self, stage_id: str, gen: int) -> None:
        _write_atomic(os.path.join(_claim_path(self.stages_dir, stage_id, gen),
                                   RELEASED), "released\n")

    def remove_generation(self, stage_id: str, gen: int) -> None:
        shutil.rmtree(_claim_path(self.stages_dir, stage_id, gen),
                      ignore_errors=True)

    def remove(self, stage_id: str) -> None:
        """Every claim and in-progress directory of a stored stage."""
        try:
            names = os.listdir(self.stages_dir)
        except OSError:
            return
        work, claim = f".inprogress-{stage_id}", f".claim-{stage_id}"
        doomed = [n for n in names if n == work or _gen_of(n, work) is not None
                  or n.startswith(f".claimtmp-{stage_id}-")]
        doomed += [n for n in names if _gen_of(n, claim) is not None]
        for entry in doomed:
            shutil.rmtree(os.path.join(self.stages_dir, entry),
                          ignore_errors=True)


def _claims(where):
    """A stages directory's LocalClaims, or the claims object given."""
    return LocalClaims(where) if isinstance(where, str) else where


_CODE_WAIT, _CODE_FINISHED, _CODE_CLAIMED = 0, 1, 2


def _agree(outcome) -> tuple[int, int]:
    """Process 0's outcome of one poll, as every process of the job sees it."""
    if isinstance(outcome, Claim):
        code, gen = _CODE_CLAIMED, outcome.gen
    elif outcome == FINISHED:
        code, gen = _CODE_FINISHED, -1
    else:
        code, gen = _CODE_WAIT, -1
    if jax.process_count() > 1:
        code, gen = (int(v) for v in multihost_utils.broadcast_one_to_all(
            np.array([code, gen], np.int32)))
    return code, gen


def _claim_path(stages_dir: str, stage_id: str, gen: int) -> str:
    return os.path.join(stages_dir, f".claim-{stage_id}.{gen}")


def _work_path(stages_dir: str, stage_id: str, gen: int) -> str:
    return os.path.join(stages_dir, f".inprogress-{stage_id}.{gen}")


def _gen_of(entry: str, prefix: str) -> int | None:
    rest = entry[len(prefix):] if entry.startswith(prefix) else ""
    return int(rest[1:]) if rest[:1] == "." and rest[1:].isdigit() else None


def _generations(stages_dir: str, stage_id: str, kind: str = ".claim-"
                 ) -> list[int]:
    try:
        names = os.listdir(stages_dir)
    except FileNotFoundError:
        return []
    prefix = f"{kind}{stage_id}"
    return sorted(g for g in (_gen_of(n, prefix) for n in names)
                  if g is not None)


def _create_claim(stages_dir: str, stage_id: str, gen: int, owner: dict
                  ) -> bool:
    """Create claim generation `gen` whole; False if another process has."""
    tmp = tempfile.mkdtemp(prefix=f".claimtmp-{stage_id}-", dir=stages_dir)
    target = _claim_path(stages_dir, stage_id, gen)
    try:
        with open(os.path.join(tmp, OWNER), "w") as f:
            json.dump(owner, f, indent=1, sort_keys=True)
        with open(os.path.join(tmp, HEARTBEAT), "w") as f:
            f.write(repr(owner["started"]))
        os.rename(tmp, target)
        return True
    except OSError:
        # Taken (ENOTEMPTY/EEXIST), or on NFS a retried rename of ours
        # whose first reply was lost: the token tells.
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with open(os.path.join(target, OWNER)) as f:
                return json.load(f).get("token") == owner["token"]
        except (OSError, ValueError):
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _adopt_work_dir(stages_dir: str, stage_id: str, gen: int) -> None:
    """Move the newest earlier owner's in-progress directory (or one from
    before claims existed) to this generation's name, in one rename."""
    older = [g for g in _generations(stages_dir, stage_id, ".inprogress-")
             if g < gen]
    legacy = os.path.join(stages_dir, f".inprogress-{stage_id}")
    source = (_work_path(stages_dir, stage_id, older[-1]) if older
              else legacy if os.path.isdir(legacy) else None)
    if source is not None:
        os.rename(source, _work_path(stages_dir, stage_id, gen))


def _read_holder(stages_dir: str, stage_id: str, gen: int) -> Holder | None:
    path = _claim_path(stages_dir, stage_id, gen)
    try:
        with open(os.path.join(path, OWNER)) as f:
            owner = json.load(f)
    except FileNotFoundError:
        if not os.path.isdir(path):
            return None  # removed: the stage was stored
        owner = {}
    except (OSError, ValueError):
        owner = {}
    try:
        with open(os.path.join(path, HEARTBEAT)) as f:
            heartbeat = float(f.read())
    except (OSError, ValueError):
        try:
            heartbeat = owner.get("started") or os.stat(path).st_mtime
        except OSError:
            return None
    return Holder(stage_id, gen, owner, heartbeat,
                  released=os.path.exists(os.path.join(path, RELEASED)))


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _identity(gen: int) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid,
            "machine": _machine_id(), "process_start": _process_start(pid),
            "started": time.time(), "token": uuid.uuid4().hex, "gen": gen}


def _machine_id() -> str:
    """Processes with equal ids see each other's pids: same kernel boot and
    pid namespace (containers sharing a hostname differ here)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc, if any."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _owner_alive(owner: dict) -> bool | None:
    """Whether the owner's process exists; None if this process cannot tell
    (another machine, or an unreadable claim)."""
    if "pid" not in owner or owner.get("machine") != _machine_id():
        return None
    pid = owner["pid"]
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return False  # exited, not yet reaped by its parent
        # A different process that got the same pid.
        return owner.get("process_start") in (None, start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True
