"""A bucket as the store of shards that share no filesystem (config.store):
gcsfs, the real client, against a local GCS emulator (tests/gcs_emulator.py)
that enforces GCS's create-only-if-absent precondition.

Object operations and their exclusive create under concurrency; the claim
protocol on objects (claim, wait, take over, exactly one winner of a race);
a stage stored by one workdir and reused by another; and a 3-model x 2-loss
x 2-seed grid run as two shards at once, each with its own workdir, giving
the one-process results with no stage computed twice, and a report read
from the bucket alone.
"""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from test_grid import (CONFIG_FILE, LADDER, _written, assert_same_runs,
                       run_alone)
from test_recipes import mirror  # noqa: F401
from w2s_jax.core import bucket_stages, object_store, stages
from w2s_jax.core.errors import UsageError, WorkdirError
from w2s_jax.report import __main__ as report_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "w2s-test"
FAST = stages.ClaimTiming(stale_after_s=600, heartbeat_s=0.05, poll_s=0.02,
                          report_every_s=0.2)


@pytest.fixture(scope="module")
def emulator():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"),
         str(port), BUCKET], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://localhost:{port}"
    yield os.environ["STORAGE_EMULATOR_HOST"]
    if previous is None:
        del os.environ["STORAGE_EMULATOR_HOST"]
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    proc.kill()
    proc.wait()


@pytest.fixture
def store_url(emulator):
    """A fresh prefix in the emulator's bucket."""
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}"


def test_objects_and_exclusive_create(store_url, tmp_path):
    store = object_store.open_store(store_url)
    assert store.read("a/x") is None and store.names("a") == []
    store.write("a/x", b"one")
    store.write("a/x", b"two")
    assert store.read("a/x") == b"two"
    assert not store.create("a/x", b"three") and store.read("a/x") == b"two"
    # 8 clients race to create one object: the server lets exactly one in.
    for round_ in range(5):
        start, won = threading.Barrier(8), []

        def attempt(i):
            mine = object_store.ObjectStore(store_url)
            start.wait()
            if mine.create(f"race/{round_}", str(i).encode()):
                won.append(i)

        threads = [threading.Thread(target=attempt, args=(i,))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and store.read(f"race/{round_}") == str(
            won[0]).encode()
    assert store.names("race") == [str(r) for r in range(5)]
    store.delete("a/x")
    store.delete("a/x")  # already gone: no error
    assert store.names("a") == []
    # open_store's probe left nothing behind.
    assert [n for n in store.names("") if n.startswith(".w2s")] == []
    # Files stream both ways.
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    store.upload(str(src), "files/big.bin")
    store.download("files/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_a_bucket_without_exclusive_create_is_refused(store_url, monkeypatch):
    monkeypatch.setattr(object_store.ObjectStore, "create",
                        lambda self, rel, data: self.write(rel, data) or True)
    with pytest.raises(WorkdirError, match="let an object be created twice"):
        object_store.open_store(store_url)


def test_bad_store_urls_are_one_line_errors(emulator):
    for bad in ("s3://bucket/x", "/shared/store", "gs://", "gs:///x"):
        with pytest.raises(UsageError, match=re.escape(
                f"config.store={bad!r} is not a bucket URL; valid: "
                f"gs://<bucket>/<path>")):
            object_store.open_store(bad)
    with pytest.raises(WorkdirError, match=re.escape(
            "config.store='gs://no-such-bucket/x': bucket 'no-such-bucket' "
            "does not exist; create it (gcloud storage buckets create "
            "gs://no-such-bucket) or fix the URL")):
        object_store.open_store("gs://no-such-bucket/x")


NAME, KEY = "weak", "0123456789ab"
STAGE_ID = f"{NAME}-{KEY}"


def _claims(store_url, tmp_path):
    return bucket_stages.BucketClaims(object_store.ObjectStore(store_url),
                                      str(tmp_path / "stages"))


def _foreign_claim(claims, gen=0, heartbeat_age=0.0):
    """A claim as a process on another machine leaves it."""
    now = time.time()
    claims.store.write(f"claims/{STAGE_ID}/{gen}.owner.json", json.dumps(
        {"host": "elsewhere", "pid": 4242, "machine": "elsewhere/x",
         "started": now - 3600, "token": "t", "gen": gen}).encode())
    claims.store.write(f"claims/{STAGE_ID}/{gen}.heartbeat",
                       repr(now - heartbeat_age).encode())


def test_claims_on_objects(store_url, tmp_path):
    claims = _claims(store_url, tmp_path)
    claim = stages.try_claim(claims, NAME, KEY, FAST)
    assert isinstance(claim, stages.Claim) and claim.gen == 0
    held = stages.holder(claims, STAGE_ID)
    assert held.owner["token"] == claim.owner["token"]
    assert held.stale_reason(600) is None
    assert isinstance(stages.try_claim(claims, NAME, KEY, FAST), stages.Holder)
    time.sleep(0.3)  # heartbeats land in the bucket
    beat = float(claims.store.read(f"claims/{STAGE_ID}/0.heartbeat"))
    assert time.time() - beat < 0.3
    # Released without finishing: the next process takes it over at once,
    # with the in-progress directory of this machine.
    os.makedirs(os.path.join(claim.work_dir, "ckpt"))
    claim.release(finished=False)
    again = stages.try_claim(claims, NAME, KEY, FAST)
    assert again.gen == 1 and again.owner["took_over"]["reason"] == (
        "its owner stopped without finishing it")
    assert os.path.isdir(os.path.join(again.work_dir, "ckpt"))
    again.release(finished=True)  # (as if stored) every claim object goes
    assert claims.store.names(f"claims/{STAGE_ID}") == []


def test_stale_foreign_claim_is_waited_for_then_taken_over(store_url, tmp_path):
    claims = _claims(store_url, tmp_path)
    _foreign_claim(claims, heartbeat_age=100)
    waiting = stages.try_claim(claims, NAME, KEY, FAST)
    assert isinstance(waiting, stages.Holder) and waiting.gen == 0
    assert "pid 4242 on elsewhere" in waiting.describe()
    stale = stages.ClaimTiming(stale_after_s=60, heartbeat_s=0.05)
    claim = stages.try_claim(claims, NAME, KEY, stale)
    assert claim.gen == 1
    assert claim.owner["took_over"]["reason"].startswith("no heartbeat for 1m40s")
    claim.release(finished=False)


def test_of_concurrent_claims_on_objects_exactly_one_wins(store_url, tmp_path):
    stale = stages.ClaimTiming(stale_after_s=60, heartbeat_s=0.05)
    for round_ in range(5):
        url = f"{store_url}/{round_}"
        if round_ % 2:
            _foreign_claim(_claims(url, tmp_path), heartbeat_age=100)
        start, outcomes = threading.Barrier(6), [None] * 6

        def attempt(i):
            mine = _claims(url, tmp_path / str(i))
            start.wait()
            outcomes[i] = stages.try_claim(mine, NAME, KEY, stale)

        threads = [threading.Thread(target=attempt, args=(i,))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [o for o in outcomes if isinstance(o, stages.Claim)]
        assert len(winners) == 1, outcomes
        assert winners[0].gen == round_ % 2
        for o in outcomes:
            assert o is winners[0] or o is None or (
                isinstance(o, stages.Holder)
                and o.owner.get("token") == winners[0].owner["token"]), o
        winners[0].release(finished=False)


def test_stage_stored_by_one_workdir_is_reused_by_another(store_url, tmp_path,
                                                          capsys):
    store = object_store.ObjectStore(store_url)
    spec = {"a": 1}
    arrays = {"x": np.arange(5.0), "y": np.eye(2)}
    first = stages.run_stage(str(tmp_path / "one"), NAME, spec,
                             lambda work: ({"ok": 1}, arrays), FAST, store)
    key = stages.stage_key(spec)
    done = json.loads(store.read(f"stages/{NAME}-{key}/done.json"))
    assert sorted(store.names(f"stages/{NAME}-{key}")) == sorted(
        ["done.json", *done.values()])
    assert store.names(f"claims/{NAME}-{key}") == []

    def never(work):
        raise AssertionError("a stored stage was computed again")

    second = stages.run_stage(str(tmp_path / "two"), NAME, spec, never,
                              FAST, store)
    assert second.reused and not first.reused
    assert second.record == first.record and second.record["ok"] == 1
    for name, value in arrays.items():
        np.testing.assert_array_equal(second.arrays[name], value)
    # The second workdir now has its own copy; the next use reads it.
    assert os.path.isfile(tmp_path / "two" / "stages" / f"{NAME}-{key}" /
                          "arrays.npz")
    out = capsys.readouterr().out
    assert f"[weak] stage written to {store_url}/stages/{NAME}-{key}" in out
    assert (f"[weak] copying finished stage {store_url}/stages/{NAME}-{key} "
            f"to {tmp_path / 'two'}") in out


def test_stage_finished_before_the_store_was_used_is_uploaded(store_url,
                                                              tmp_path):
    store = object_store.ObjectStore(store_url)
    spec = {"b": 2}
    local = stages.run_stage(str(tmp_path / "one"), NAME, spec,
                             lambda work: ({"ok": 2}, {"x": np.ones(3)}), FAST)
    assert store.names("stages") == []
    again = stages.run_stage(str(tmp_path / "one"), NAME, spec, None, FAST,
                             store)
    assert again.reused and again.record == local.record
    fetched = stages.run_stage(str(tmp_path / "two"), NAME, spec, None, FAST,
                               store)
    assert fetched.reused and fetched.record == local.record
    np.testing.assert_array_equal(fetched.arrays["x"], np.ones(3))


def _local_stage(tmp_path, value):
    path = str(tmp_path / f"local{value}" / STAGE_ID)
    stages._store(path, {"v": value}, {"x": np.full(3, value)})
    return path


def test_a_stage_stored_second_is_replaced_by_the_first(store_url, tmp_path):
    bucket = bucket_stages.BucketStages(object_store.ObjectStore(store_url),
                                        str(tmp_path / "stages"))
    first, second = _local_stage(tmp_path, 1.0), _local_stage(tmp_path, 2.0)
    assert bucket.publish(STAGE_ID, first)
    # An owner judged gone that was not: its copy loses, and it goes on
    # with the stored one, as every other machine does.
    assert not bucket.publish(STAGE_ID, second)
    loaded = stages._load(NAME, KEY, second, reused=False)
    assert loaded.record == {"v": 1.0}
    np.testing.assert_array_equal(loaded.arrays["x"], np.full(3, 1.0))
    # The loser's files were deleted: the winner's two and done.json.
    assert len(bucket.store.names(f"stages/{STAGE_ID}")) == 3


def test_a_create_whose_reply_was_lost_is_still_ours(store_url, tmp_path,
                                                     monkeypatch):
    """The client retries a create whose reply was lost; the retry finds
    the object there and fails, though the first attempt made it."""
    store = object_store.ObjectStore(store_url)
    create = object_store.ObjectStore.create
    monkeypatch.setattr(object_store.ObjectStore, "create",
                        lambda self, rel, data: create(self, rel, data) and False)
    bucket = bucket_stages.BucketStages(store, str(tmp_path / "stages"))
    assert bucket.publish(STAGE_ID, _local_stage(tmp_path, 1.0))
    bucket.sync(NAME, STAGE_ID, str(tmp_path / "fresh" / STAGE_ID))
    assert stages._load(NAME, KEY, str(tmp_path / "fresh" / STAGE_ID),
                        reused=True).record == {"v": 1.0}
    claims = bucket_stages.BucketClaims(store, str(tmp_path / "stages"))
    claim = stages.try_claim(claims, "other", KEY, FAST)
    assert isinstance(claim, stages.Claim) and claim.gen == 0
    claim.release(finished=False)


def test_a_waiter_looks_again_after_a_store_failure(store_url, tmp_path,
                                                    monkeypatch, capsys):
    from gcsfs.retry import HttpError
    claims = _claims(store_url, tmp_path)
    monkeypatch.setattr(bucket_stages, "BUCKET_POLL_S", 0.0)
    monkeypatch.setattr(bucket_stages.BucketClaims, "MIN_POLL_S", 0.0)
    exists, failures = object_store.ObjectStore.exists, [3]

    def flaky(self, rel):
        if failures[0]:
            failures[0] -= 1
            raise HttpError({"code": 503, "message": "backend error"})
        return exists(self, rel)

    monkeypatch.setattr(object_store.ObjectStore, "exists", flaky)
    claim = stages.acquire(claims, NAME, KEY, FAST)
    assert isinstance(claim, stages.Claim) and failures == [0]
    claim.release(finished=False)
    out = capsys.readouterr().out
    assert out.count("warning: the store failed while looking at stage") == 1

    # Failing for longer than a claim stays live: the error is raised.
    failures[0] = 10 ** 6
    brief = stages.ClaimTiming(stale_after_s=0.2, heartbeat_s=0.05,
                               poll_s=0.02)
    with pytest.raises(HttpError):
        stages.acquire(claims, "other", KEY, brief)


def test_heartbeat_outlives_a_failing_store(store_url, tmp_path, monkeypatch):
    from gcsfs.retry import HttpError
    claims = _claims(store_url, tmp_path)
    claim = stages.try_claim(claims, NAME, KEY, FAST)
    failing = threading.Event()
    write = object_store.ObjectStore.write

    def flaky(self, rel, data):
        if failing.is_set():
            raise HttpError({"code": 503, "message": "backend error"})
        write(self, rel, data)

    monkeypatch.setattr(object_store.ObjectStore, "write", flaky)
    failing.set()
    time.sleep(0.3)  # several beats fail
    assert claim._thread.is_alive()
    failing.clear()
    time.sleep(0.3)
    beat = float(claims.store.read(f"claims/{STAGE_ID}/0.heartbeat"))
    assert time.time() - beat < 0.3
    failing.set()  # release must not raise either
    claim.release(finished=False)
    failing.clear()


def _index(store_url):
    text = object_store.ObjectStore(store_url).read("index.jsonl").decode()
    return {r["run_id"]: r for r in map(json.loads, text.splitlines())}


def test_two_shards_on_two_machines_share_a_bucket(mirror, store_url, tmp_path):
    config_file = tmp_path / "grid_config.py"
    config_file.write_text(CONFIG_FILE.format(mirror=mirror, ladder=LADDER))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # Each shard has its own workdir, as on separate machines.
    procs = [subprocess.Popen(
        [sys.executable, "-m", "w2s_jax.main", f"--config={config_file}",
         f"--workdir={tmp_path / f'machine{i}'}", f"--shard={i}/2",
         f"--config.store={store_url}"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    store = object_store.ObjectStore(store_url)
    stored = store.names("stages")
    written = [line for out, _ in outputs for line in _written(out)]
    # Every stage computed by exactly one shard, and none left claimed.
    assert len(written) == len(stored) > 0
    assert not any("another process stored" in out for out, _ in outputs)
    assert store.names("claims") == []
    assert all(f"tables and plots: python -m w2s_jax.report --store="
               f"{store_url} --out=" in out for out, _ in outputs)

    alone = str(tmp_path / "alone")
    single = run_alone(config_file, alone, env)
    assert_same_runs(_index(store_url), single)
    assert sorted(store.names("runs")) == sorted(f"{r}.json" for r in single)

    # The report from the bucket alone equals the one-process report.
    from_bucket = report_main.write_report(store_url, str(tmp_path / "r1"))
    from_local = report_main.write_report(alone, str(tmp_path / "r2"))
    assert from_bucket["data"] == from_local["data"]
    medians = from_bucket["data"]["medians"]
    assert len(medians) == 4 and all(  # (all tasks, sst2) x 2 losses
        isinstance(row["median_pgr"], float) for row in medians), medians
