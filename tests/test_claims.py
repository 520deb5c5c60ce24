"""Stage claims: two runs on one workdir train each stage once, a claim
whose owner is gone is taken over (with its checkpoints), and of several
processes racing for a claim exactly one gets it."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from w2s_jax.core import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny runs (8 steps of 16 per stage, a checkpoint every 2, a progress line
# every step); max_ctx=16 gives every batch one shape, so each stage
# compiles once.
ARGS = ["--config=configs/smoke.py", "--config.n_train=256",
        "--config.n_test=64", "--config.max_ctx=16", "--config.train.epochs=1",
        "--config.train.batch_size=16", "--config.train.minibatch_size=16",
        "--config.train.eval_batch_size=64", "--config.train.log_every=1",
        "--config.checkpoint_every_steps=2", "--verbosity=-1"]
STAGES = ("weak", "w2s", "ceiling")


# End to end ------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           # A compilation cache shared by the runs: only the first compiles.
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return env


def _start(workdir, log_path, env):
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "w2s_jax.main", f"--workdir={workdir}",
             *ARGS], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def _results(workdir):
    (path,) = glob.glob(os.path.join(workdir, "results", "*.json"))
    return _read(path, "rb")


def _leftovers(workdir):
    return [n for n in os.listdir(os.path.join(workdir, "stages"))
            if n.startswith(".")]


def test_two_runs_on_one_workdir_train_each_stage_once(tmp_path, env):
    workdir = str(tmp_path / "shared")
    logs = [str(tmp_path / f"run{i}.txt") for i in range(2)]
    procs = [_start(workdir, log, env) for log in logs]
    # Both write the same results file; read it as each run ends, so the
    # two runs' files are compared.
    results, deadline = {}, time.monotonic() + 900
    try:
        while len(results) < 2:
            assert time.monotonic() < deadline
            for i, proc in enumerate(procs):
                if i not in results and proc.poll() is not None:
                    assert proc.returncode == 0, _read(logs[i])[-3000:]
                    results[i] = _results(workdir)
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.kill()
    assert results[0] == results[1]
    outputs = [_read(log) for log in logs]
    both = "".join(outputs)
    for stage in STAGES:
        # Trained once in all (each run's first step is logged), stored
        # once, and reused by the other run.
        assert both.count(f"[{stage}] step 1/8 ") == 1, stage
        assert both.count(f"[{stage}] stage written to ") == 1, stage
        assert both.count(f"[{stage}] reusing finished stage ") == 1, stage
        (path,) = glob.glob(os.path.join(workdir, "stages", f"{stage}-*",
                                         "record.json"))
        record = json.loads(_read(path))
        assert record["resumed_from_step"] == 0 and record["steps"] == 8
    # They ran side by side: one waited for a stage the other was computing.
    assert re.search(r"\[weak\] waiting for stage weak-\w+, claimed by pid \d+ on ",
                     both), both[-3000:]
    assert "was finished by the process that held it; waited" in both
    assert _leftovers(workdir) == []


def test_claim_of_killed_run_is_taken_over(tmp_path, env):
    workdir, log = str(tmp_path), str(tmp_path / "killed.txt")
    proc = _start(workdir, log, env)
    pattern = os.path.join(workdir, "stages", ".inprogress-weak-*.0", "ckpt",
                           "*")
    deadline = time.monotonic() + 600
    try:
        # Until a finished checkpoint (not orbax's temporary one) exists.
        while not any(os.path.basename(p).isdigit()
                      for p in glob.glob(pattern)):
            assert proc.poll() is None, _read(log)[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    (claim,) = glob.glob(os.path.join(workdir, "stages", ".claim-weak-*.0"))
    owner = json.loads(_read(os.path.join(claim, "owner.json")))
    assert owner["pid"] == proc.pid

    rerun = subprocess.run(
        [sys.executable, "-m", "w2s_jax.main", f"--workdir={workdir}", *ARGS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert re.search(rf"\[weak\] taking over stage weak-\w+ from pid "
                     rf"{proc.pid} on .*: process {proc.pid} no longer exists",
                     rerun.stdout), rerun.stdout[-3000:]
    # It inherited the dead run's checkpoints.
    assert re.search(r"\[weak\] resuming from step [2468]\n", rerun.stdout), \
        rerun.stdout[-3000:]
    assert _leftovers(workdir) == []


# The protocol ------------------------------------------------------------------

NAME, KEY = "weak", "0123456789ab"
STAGE_ID = f"{NAME}-{KEY}"
FAST = stages.ClaimTiming(stale_after_s=600, heartbeat_s=0.05, poll_s=0.02,
                          report_every_s=0.2)


def _foreign_claim(stages_dir, gen=0, heartbeat_age=0.0):
    """A claim as a process on another host leaves it."""
    path = os.path.join(stages_dir, f".claim-{STAGE_ID}.{gen}")
    os.makedirs(path)
    now = time.time()
    with open(os.path.join(path, "owner.json"), "w") as f:
        json.dump({"host": "elsewhere", "pid": 4242, "machine": "elsewhere/x",
                   "started": now - 3600, "token": "t", "gen": gen}, f)
    with open(os.path.join(path, "heartbeat"), "w") as f:
        f.write(repr(now - heartbeat_age))
    return path


def _checkpoint(stages_dir, name):
    """A fake checkpoint file in in-progress directory `name`."""
    path = os.path.join(stages_dir, name, "ckpt", "4", "state")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("step 4")


def _store(stages_dir):
    stages._store(os.path.join(stages_dir, STAGE_ID), {"stage": NAME},
                  {"x": np.arange(3)})


def test_claim_then_release_leaves_nothing(tmp_path):
    stages_dir = str(tmp_path)
    claim = stages.try_claim(stages_dir, NAME, KEY, FAST)
    assert isinstance(claim, stages.Claim) and claim.gen == 0
    assert claim.work_dir == os.path.join(stages_dir, f".inprogress-{STAGE_ID}.0")
    held = stages.holder(stages_dir, STAGE_ID)
    assert held.owner["pid"] == os.getpid() and held.stale_reason(600) is None
    # A second attempt from this (live) process waits for it.
    assert isinstance(stages.try_claim(stages_dir, NAME, KEY, FAST),
                      stages.Holder)
    _checkpoint(stages_dir, os.path.basename(claim.work_dir))
    _store(stages_dir)
    claim.release(finished=True)
    assert os.listdir(stages_dir) == [STAGE_ID]
    assert stages.try_claim(stages_dir, NAME, KEY, FAST) == stages.FINISHED


def test_live_foreign_claim_is_waited_for_stale_one_taken_over(tmp_path):
    stages_dir = str(tmp_path)
    _foreign_claim(stages_dir, heartbeat_age=100)
    _checkpoint(stages_dir, f".inprogress-{STAGE_ID}.0")
    waiting = stages.try_claim(stages_dir, NAME, KEY, FAST)
    assert isinstance(waiting, stages.Holder) and waiting.gen == 0
    assert re.fullmatch(r"pid 4242 on elsewhere \(claimed [-\d]+ [:\d]+, "
                        r"last heartbeat 1m40s ago\)", waiting.describe())

    stale = stages.ClaimTiming(stale_after_s=60, heartbeat_s=0.05)
    claim = stages.try_claim(stages_dir, NAME, KEY, stale)
    assert isinstance(claim, stages.Claim) and claim.gen == 1
    assert claim.owner["took_over"]["reason"].startswith("no heartbeat for 1m40s")
    # The checkpoints moved to the new owner's directory, in one rename.
    assert _read(os.path.join(claim.work_dir, "ckpt", "4", "state")) == "step 4"
    assert not os.path.exists(os.path.join(stages_dir, f".inprogress-{STAGE_ID}.0"))
    claim.release(finished=False)
    # Released: the next process takes it over at once, checkpoints included.
    again = stages.try_claim(stages_dir, NAME, KEY, FAST)
    assert again.gen == 2 and os.path.isdir(os.path.join(again.work_dir, "ckpt"))
    assert again.owner["took_over"]["reason"] == ("its owner stopped without "
                                                  "finishing it")
    again.release(finished=False)


def test_claim_of_dead_process_on_this_machine_is_taken_over(tmp_path):
    stages_dir = str(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = _foreign_claim(stages_dir)
    with open(os.path.join(path, "owner.json"), "w") as f:
        json.dump({"host": "here", "pid": dead.pid, "started": time.time(),
                   "machine": stages._machine_id(), "token": "t"}, f)
    # Before claims existed, the in-progress directory had no generation.
    _checkpoint(stages_dir, f".inprogress-{STAGE_ID}")
    claim = stages.try_claim(stages_dir, NAME, KEY, FAST)
    assert claim.gen == 1
    assert claim.owner["took_over"]["reason"] == (f"process {dead.pid} no "
                                                  f"longer exists")
    assert os.path.exists(os.path.join(claim.work_dir, "ckpt", "4", "state"))
    claim.release(finished=False)


def test_heartbeat_keeps_claim_alive_until_owner_stops(tmp_path, monkeypatch):
    stages_dir = str(tmp_path)
    timing = stages.ClaimTiming(stale_after_s=0.5, heartbeat_s=0.05)
    claim = stages.try_claim(stages_dir, NAME, KEY, timing)
    # Judge it as a process on another host would: by its heartbeat alone.
    monkeypatch.setattr(stages, "_owner_alive", lambda owner: None)
    time.sleep(1.0)
    assert isinstance(stages.try_claim(stages_dir, NAME, KEY, timing),
                      stages.Holder)
    claim._stop.set()  # the owner hangs (or its host goes away)
    claim._thread.join()
    time.sleep(0.7)
    taker = stages.try_claim(stages_dir, NAME, KEY, timing)
    assert isinstance(taker, stages.Claim) and taker.gen == 1
    taker.release(finished=False)


def _race(stages_dir, timing, n=8):
    """n threads try to claim at the same moment; their outcomes."""
    start, outcomes = threading.Barrier(n), [None] * n

    def attempt(i):
        start.wait()
        outcomes[i] = stages.try_claim(stages_dir, NAME, KEY, timing)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("stale_claim", [False, True])
def test_of_concurrent_claims_exactly_one_wins(tmp_path, stale_claim):
    stale = stages.ClaimTiming(stale_after_s=60, heartbeat_s=0.05)
    for round_ in range(20):
        stages_dir = str(tmp_path / str(round_))
        os.makedirs(stages_dir)
        if stale_claim:
            _foreign_claim(stages_dir, heartbeat_age=100)
            _checkpoint(stages_dir, f".inprogress-{STAGE_ID}.0")
        outcomes = _race(stages_dir, stale)
        winners = [o for o in outcomes if isinstance(o, stages.Claim)]
        assert len(winners) == 1, outcomes
        (winner,) = winners
        assert winner.gen == (1 if stale_claim else 0)
        # The losers wait for the winner (or looked while it changed hands).
        for o in outcomes:
            assert o is winner or o is None or (
                isinstance(o, stages.Holder)
                and (o.gen, o.owner.get("token")) in
                ((winner.gen, winner.owner["token"]),)), o
        if stale_claim:
            assert os.path.exists(os.path.join(winner.work_dir, "ckpt"))
        assert sorted(n for n in os.listdir(stages_dir)
                      if n.startswith(".claimtmp")) == []
        winner.release(finished=False)


def test_stored_stage_wins_over_any_claim(tmp_path):
    stages_dir = str(tmp_path)
    _foreign_claim(stages_dir)  # its owner died between storing and cleanup
    _store(stages_dir)
    assert stages.try_claim(stages_dir, NAME, KEY, FAST) == stages.FINISHED
    assert stages.acquire(stages_dir, NAME, KEY, FAST) is None


def test_waiter_reuses_the_stage_when_its_owner_stores_it(tmp_path, capsys):
    stages_dir = str(tmp_path)
    claim = stages.try_claim(stages_dir, NAME, KEY, FAST)

    def finish():
        time.sleep(0.5)
        _store(stages_dir)
        claim.release(finished=True)

    owner = threading.Thread(target=finish)
    owner.start()
    assert stages.acquire(stages_dir, NAME, KEY, FAST) is None
    owner.join()
    out = capsys.readouterr().out
    assert re.search(rf"\[weak\] waiting for stage {STAGE_ID}, claimed by pid "
                     rf"{os.getpid()} on .* \(claimed .*, last heartbeat ", out), out
    assert "[weak] still waiting (" in out
    assert f"[weak] stage {STAGE_ID} was finished by the process that held it" in out
    assert os.listdir(stages_dir) == [STAGE_ID]


def test_run_stage_releases_its_claim_when_compute_fails(tmp_path):
    workdir = str(tmp_path)

    def fails(work_dir):
        os.makedirs(os.path.join(work_dir, "ckpt"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        stages.run_stage(workdir, NAME, {"a": 1}, fails, FAST)
    key = stages.stage_key({"a": 1})
    held = stages.holder(os.path.join(workdir, "stages"), f"{NAME}-{key}")
    assert held.released

    def succeeds(work_dir):
        assert os.path.isdir(os.path.join(work_dir, "ckpt"))  # inherited
        return {"ok": True}, {"x": np.ones(2)}

    result = stages.run_stage(workdir, NAME, {"a": 1}, succeeds, FAST)
    assert result.record["ok"] and not result.reused
    assert os.listdir(os.path.join(workdir, "stages")) == [f"{NAME}-{key}"]


def test_stale_timeout_from_environment(monkeypatch):
    monkeypatch.setenv(stages.ENV_STALE_AFTER, "120")
    assert stages.ClaimTiming.from_env().stale_after_s == 120
    monkeypatch.setenv(stages.ENV_STALE_AFTER, "soon")
    with pytest.raises(ValueError, match="W2S_CLAIM_STALE_S='soon' must be"):
        stages.ClaimTiming.from_env()
