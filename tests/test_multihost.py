"""Two processes joined by jax.distributed (on CPU, over gloo) write the
results file of one process with the same devices, byte for byte.

One device per process: with two devices in all, a gradient all-reduce
sums two values, which is exact in any order, so the split into processes
cannot change a bit.
"""
import glob
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two tiny models, 2 steps of 32 per stage, one shape per stage (max_ctx=16).
ARGS = ["--config=configs/smoke.py", "--config.n_train=128",
        "--config.n_test=64", "--config.max_ctx=16", "--config.train.epochs=1",
        "--config.train.batch_size=32", "--config.train.eval_batch_size=64",
        "--config.strong.name=tiny-gpt2-random", "--verbosity=-1"]


def _command(workdir, *extra):
    return [sys.executable, "-m", "w2s_jax.main", f"--workdir={workdir}",
            *ARGS, *extra]


def _env(devices, **extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "JAX_NUM_CPU_DEVICES": str(devices), **extra}


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _results(workdir):
    (path,) = glob.glob(os.path.join(workdir, "results", "*.json"))
    with open(path, "rb") as f:
        return f.read()


def test_two_processes_match_one(tmp_path):
    single = str(tmp_path / "single")
    proc = subprocess.run(_command(single), cwd=REPO, env=_env(2),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    multi, port = str(tmp_path / "multi"), _free_port()
    # Checkpoints every step exercise orbax's multi-process saves; how often
    # a run checkpoints is not part of its results.
    procs = [subprocess.Popen(
        _command(multi, "--config.checkpoint_every_steps=1"), cwd=REPO,
        env=_env(1, W2S_COORDINATOR=f"localhost:{port}",
                 W2S_NUM_PROCESSES="2", W2S_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, out[-3000:]
        assert f"[distributed] process {i} of 2: 1 of 2 devices" in out
    # Only process 0 writes; the other reads what it wrote.
    assert "[w2s] stage written" in outputs[0]
    assert "stage written" not in outputs[1]
    assert "[w2s] gold test accuracy" in outputs[1]
    assert _results(multi) == _results(single)
    assert not glob.glob(os.path.join(multi, "stages", ".inprogress-*"))
