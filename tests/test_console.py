"""The console shows progress, warnings and errors; library INFO logs go to a file."""
import glob
import logging
import os
import re
import subprocess
import sys
import warnings

import pytest

from w2s_jax.core import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As in test_experiment.py, plus a checkpoint every step: orbax logs a lot.
SMALL = ["--config.n_train=256", "--config.n_test=128", "--config.max_ctx=64",
         "--config.train.epochs=1", "--config.train.batch_size=32",
         "--config.train.eval_batch_size=64",
         "--config.checkpoint_every_steps=1"]
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} ", re.M)  # I1201 13:53:19.682800 ...


def _run(workdir, *extra):
    cmd = [sys.executable, "-m", "w2s_jax.main", "--config=configs/smoke.py",
           f"--workdir={workdir}", *SMALL, *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def _log_files(workdir):
    return sorted(glob.glob(os.path.join(workdir, "logs", "run-*-*.log")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("console"))
    quiet = _run(workdir)
    files = _log_files(workdir)
    # Same workdir, another loss: only the w2s stage trains (and checkpoints).
    verbose = _run(workdir, "--verbosity=0", "--config.loss=xent")
    return workdir, quiet, files, verbose


def test_console_has_progress_but_no_library_info(runs):
    _, (stdout, stderr), files, _ = runs
    assert "[weak] step 4/4 loss" in stdout and "| w2s |" in stdout
    console_text = stdout + stderr
    assert not ABSL_PREFIX.search(console_text), console_text[:2000]
    assert "INFO" not in console_text and "info: " not in stderr
    assert len(console_text.splitlines()) < 60, console_text[:3000]
    assert len(files) == 1 and f"[logs] library logs go to {files[0]}" in stdout


def test_library_info_goes_to_the_log_file(runs):
    _, _, files, _ = runs
    with open(files[0]) as f:
        text = f.read()
    # orbax logs through absl: saves, finalize threads, deletions.
    orbax = re.findall(r" INFO absl \w+\.py:\d+\] .*[Cc]heckpoint", text)
    assert len(orbax) > 20, text[:2000]
    assert not ABSL_PREFIX.search(text)


def test_verbosity_brings_info_back_to_the_console(runs):
    workdir, _, _, (stdout, stderr) = runs
    assert "[w2s] step 4/4 loss" in stdout
    assert "[logs]" not in stdout
    assert re.search(r"^info: absl: .*[Cc]heckpoint", stderr, re.M), stderr[:2000]
    assert not ABSL_PREFIX.search(stderr)
    assert len(_log_files(workdir)) == 2  # one file per run


@pytest.fixture
def in_process(tmp_path, capsys):
    """setup() in this process, its console captured; logging restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield lambda verbosity=None: console.setup(str(tmp_path), verbosity,
                                               from_flags=False)
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_repeated_library_warnings_are_cut_ours_are_not(in_process, capsys):
    path = in_process()
    for i in range(5):
        logging.getLogger("huggingface_hub.utils._http").warning(
            f"Retrying in {2 ** i}s [Retry {i + 1}/5].")
    for _ in range(3):
        logging.getLogger("w2s_jax.data.splits").warning("kept %d rows", 7)
    logging.getLogger("orbax.checkpoint").info("saved step 3")
    logging.getLogger("datasets.builder").error("broken %s", "shard")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings restored showwarning
        warnings.warn("old API")
    err = capsys.readouterr().err.splitlines()
    hub = [line for line in err if "Retrying" in line]
    assert hub[0] == ("warning: huggingface_hub.utils._http: "
                      "Retrying in 1s [Retry 1/5].")
    assert len(hub) == 2 and "further repeats only in" in hub[1]
    assert err.count("warning: w2s_jax.data.splits: kept 7 rows") == 3
    assert "error: datasets.builder: broken shard" in err
    assert any(line.startswith("warning: py.warnings: ") and "old API" in line
               for line in err)
    assert not any("saved step 3" in line for line in err)
    with open(path) as f:
        text = f.read()
    assert text.count("Retrying in") == 5 and "saved step 3" in text


def test_verbosity_levels(in_process, capsys):
    in_process(verbosity=0)
    logging.getLogger("absl").info("restored checkpoint")
    logging.getLogger("absl").debug("not shown")
    assert capsys.readouterr().err == "info: absl: restored checkpoint\n"
    assert console.console_level(None) == logging.WARNING
    assert console.console_level(-1) == logging.WARNING
    assert console.console_level(-2) == logging.ERROR
    assert console.console_level(1) == logging.DEBUG


def test_deferred_log_file_waits_for_the_checks(tmp_path, capsys):
    """A run refused by its checks leaves nothing in the workdir; once they
    pass, the file holds what was logged before too."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        path = console.setup(str(tmp_path / "work"), from_flags=False,
                             defer_file=True)
        logging.getLogger("datasets.builder").info("read the mirror")
        assert not os.path.exists(tmp_path / "work")
        assert "[logs]" not in capsys.readouterr().out
        assert console.open_log_file() == path
        assert f"[logs] library logs go to {path}" in capsys.readouterr().out
        logging.getLogger("orbax.checkpoint").info("saved step 3")
        console.to_log_file(logging.ERROR, "UsageError: late")
        assert console.open_log_file() == path  # once only
        assert "[logs]" not in capsys.readouterr().out
        with open(path) as f:
            text = f.read()
        assert text.index("read the mirror") < text.index("saved step 3")
        assert "UsageError: late" in text
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
