"""Interrupted runs resume from their last checkpoint and end with the
results file of an uninterrupted run, byte for byte."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 8 steps of 16 per stage, a checkpoint every 2, a progress line every step;
# max_ctx=16 gives every batch one shape, so each stage compiles once.
ARGS = ["--config=configs/smoke.py", "--config.n_train=256",
        "--config.n_test=64", "--config.max_ctx=16", "--config.train.epochs=1",
        "--config.train.batch_size=16", "--config.train.minibatch_size=16",
        "--config.train.eval_batch_size=64", "--config.train.log_every=1",
        "--config.checkpoint_every_steps=2",
        "--verbosity=-1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # A compilation cache shared by the runs: only the first one compiles.
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _start(workdir, log_path, env):
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "w2s_jax.main", f"--workdir={workdir}",
             *ARGS], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _read(path):
    with open(path) as f:
        return f.read()


def _run(workdir, log_path, env):
    proc = _start(workdir, log_path, env)
    assert proc.wait(timeout=600) == 0, _read(log_path)[-3000:]
    return _read(log_path)


def _interrupt(workdir, log_path, env, ready, sig):
    """Start a run, send `sig` once ready() holds; return its exit status."""
    proc = _start(workdir, log_path, env)
    deadline = time.monotonic() + 600
    while not ready():
        assert proc.poll() is None, ("the run ended before it could be "
                                     "interrupted:\n" + _read(log_path)[-3000:])
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc.wait(timeout=120)


def _checkpoints(workdir, stage):
    """Steps of the finished checkpoints of the unfinished `stage`."""
    paths = glob.glob(os.path.join(workdir, "stages", f".inprogress-{stage}-*",
                                   "ckpt", "*"))
    return sorted(int(os.path.basename(p)) for p in paths
                  if os.path.basename(p).isdigit())


def _results(workdir):
    (path,) = glob.glob(os.path.join(workdir, "results", "*.json"))
    with open(path, "rb") as f:
        return f.read()


def _stage_record(workdir, stage):
    (path,) = glob.glob(os.path.join(workdir, "stages", f"{stage}-*",
                                     "record.json"))
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _run(workdir, os.path.join(workdir, "log.txt"), env)
    return workdir


def _assert_same_as_reference(workdir, reference, stage, step):
    assert _results(workdir) == _results(reference)
    record, full = _stage_record(workdir, stage), _stage_record(reference, stage)
    assert record["resumed_from_step"] == step
    assert record["loss_curve"] == full["loss_curve"]
    assert len(record["loss_curve"]) == record["steps"] == 8
    # Finished: its checkpoints are gone.
    assert not glob.glob(os.path.join(workdir, "stages", ".inprogress-*"))


def test_sigkill_resumes_from_last_checkpoint(tmp_path, env, reference):
    workdir, log = str(tmp_path), str(tmp_path / "killed.txt")
    status = _interrupt(workdir, log, env,
                        lambda: _checkpoints(workdir, "ceiling"), signal.SIGKILL)
    assert status == -signal.SIGKILL
    saved = _checkpoints(workdir, "ceiling")
    assert saved and saved[-1] < 8, saved

    rerun = _run(workdir, str(tmp_path / "rerun.txt"), env)
    assert "[weak] reusing finished stage" in rerun
    assert f"[ceiling] resuming from step {saved[-1]}\n" in rerun
    _assert_same_as_reference(workdir, reference, "ceiling", saved[-1])


def test_sigterm_saves_then_resumes_at_that_step(tmp_path, env, reference):
    workdir, log = str(tmp_path), str(tmp_path / "stopped.txt")
    status = _interrupt(workdir, log, env,
                        lambda: "[w2s] step 3/8" in _read(log), signal.SIGTERM)
    output = _read(log)
    assert status == 143, output[-3000:]
    stopped = re.search(r"\[w2s\] stopped by SIGTERM after step (\d+); "
                        r"checkpoint saved", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert 3 <= step <= 8 and step in _checkpoints(workdir, "w2s")

    rerun = _run(workdir, str(tmp_path / "rerun.txt"), env)
    assert "[ceiling] reusing finished stage" in rerun
    assert f"[w2s] resuming from step {step}\n" in rerun
    _assert_same_as_reference(workdir, reference, "w2s", step)
