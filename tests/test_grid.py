"""Grids: points and shards by hand, and a 3-model x 2-loss x 2-seed grid
end to end: a rerun trains nothing, one more loss trains only its runs, and
two shards started at once on one workdir give the one-process results
with no stage computed twice. The result store holds every run."""
import json
import os
import subprocess
import sys

import pytest

from test_recipes import mirror  # noqa: F401
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core import stages
from w2s_jax.core.errors import UsageError
from w2s_jax.experiment import grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LADDER = "bow-tfidf,tiny-gpt2-random,small-gpt2-random"
WRITTEN = "stage written to"


def _gpt2_params(vocab, d, positions, layers):
    """GPT-2's parameter count written out: embeddings, blocks, final LN."""
    block = (2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d
             + (d * 4 * d + 4 * d) + (4 * d * d + d))
    return vocab * d + positions * d + layers * block + 2 * d


# The bag of words: one weight per vocabulary word; the byte-level GPT-2s.
PARAMS = {"bow-tfidf": 5000, "tiny-gpt2-random": _gpt2_params(256, 64, 512, 2),
          "small-gpt2-random": _gpt2_params(256, 128, 512, 4)}


def _grid_config(mirror_dir, losses="xent,logconf"):
    config = config_lib.base_config()
    config.task, config.data_dir = "sst2", mirror_dir
    config.n_train, config.n_test, config.max_ctx = 384, 128, 32
    config.train.epochs, config.train.log_every = 2, 100
    config.weak = config_lib.model_config("bow-tfidf", mode="features")
    config.strong = config_lib.model_config("tiny-gpt2-random", mode="features")
    config.grid.ladder = LADDER
    config.seeds, config.losses = "0,1", losses
    return config


def test_ladder_points_tasks_and_overrides():
    config = config_lib.base_config()
    config.grid.ladder = "a,b,c"
    assert grid.points(config) == [
        {"weak.name": "a", "strong.name": "b"},
        {"weak.name": "a", "strong.name": "c"},
        {"weak.name": "b", "strong.name": "c"}]
    config.grid.tasks = "sst2,boolq"
    config.grid.points = [{"loss_params.alpha_max": 0.5}, {"train.epochs": 3}]
    found = grid.points(config)
    assert len(found) == 3 * 2 * 2
    assert found[0] == {"weak.name": "a", "strong.name": "b",
                        "loss_params.alpha_max": 0.5, "task": "sst2"}
    unit = grid.apply(config, found[-1])
    assert (unit.task, unit.weak.name, unit.strong.name, unit.train.epochs) == (
        "boolq", "b", "c", 3)
    assert not grid.is_grid(unit)  # a unit is a single run
    with pytest.raises(UsageError, match="config.train has no field 'epoch'"):
        grid.apply(config, {"train.epoch": 3})


def test_units_and_shards_partition_the_grid(mirror):
    config = _grid_config(mirror)
    units = grid.units(config)
    assert len(units) == 3 * 2 * 2  # pairs x seeds x losses
    labels = [grid.label(u) for u in units]
    assert len(set(labels)) == len(labels)
    shares = [units[i::3] for i in range(3)]
    assert sorted(grid.label(u) for s in shares for u in s) == sorted(labels)
    assert {len(s) for s in shares} == {4}
    # Deterministic: the same config gives the same order.
    assert [grid.label(u) for u in grid.units(config)] == labels
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(UsageError, match="--shard"):
            grid.parse_shard(bad)


def test_a_busy_unit_goes_back_in_the_queue(mirror):
    """A unit whose stage another process holds is retried after the
    others, not waited for."""
    units = grid.units(_grid_config(mirror))[:3]
    calls, busy = [], {grid.label(units[0]): 2}

    def run_one(unit, workdir):
        calls.append(grid.label(unit))
        assert not stages._WAITING[0]  # acquire raises instead of waiting
        if busy.get(grid.label(unit)):
            busy[grid.label(unit)] -= 1
            raise stages.StageBusy("weak-abc", "pid 1 on host")
        return grid.label(unit)

    results = grid.run(units, run_one, "unused", poll_s=0.0)
    labels = [grid.label(u) for u in units]
    assert results == labels  # in the grid's order, whatever the run order
    assert calls == [labels[0], labels[1], labels[2], labels[0], labels[0]]
    assert stages._WAITING[0]


def _written(text):
    return [line for line in text.splitlines() if WRITTEN in line]


def _store(workdir):
    with open(os.path.join(workdir, "store", "index.jsonl")) as f:
        return {r["run_id"]: r for r in map(json.loads, f)}


def test_grid_reruns_train_nothing_and_new_losses_only_new_runs(
        mirror, tmp_path, capsys):
    workdir = str(tmp_path / "work")
    out = run.run(_grid_config(mirror), workdir)
    first = capsys.readouterr().out
    assert len(out["runs"]) == 12
    stage_dirs = sorted(os.listdir(os.path.join(workdir, "stages")))
    # Shared stages trained once: a weak model's labels and a ceiling per
    # (model, seed), one w2s student per (pair, seed, loss).
    assert len(_written(first)) == len(stage_dirs)
    weak = {r["stages"]["weak"]["key"] for r in out["runs"]}
    assert len(weak) == 2 * 2  # bow-tfidf and tiny as weak models, 2 seeds
    store = _store(workdir)
    assert len(store) == 12
    for results in out["runs"]:
        record = next(r for r in store.values()
                      if r["models"] == results["models"]
                      and (r["loss"], r["seed"]) == (results["loss"], results["seed"]))
        assert record["gold_test"] == json.loads(json.dumps(results["gold_test"]))
        assert {m: record["model_params"][m] for m in record["models"]} == {
            m: PARAMS[m] for m in results["models"]}

    _check_report_median(workdir)

    run.run(_grid_config(mirror), workdir)
    assert _written(capsys.readouterr().out) == []  # everything reused
    assert sorted(os.listdir(os.path.join(workdir, "stages"))) == stage_dirs

    out = run.run(_grid_config(mirror, losses="xent,logconf,product"), workdir)
    written = _written(capsys.readouterr().out)
    # Only the new loss's students: one per pair and seed.
    assert len(written) == 3 * 2
    assert all("[w2s]" in line for line in written)
    assert len(_store(workdir)) == 18


def _check_report_median(workdir):
    """The report's median PGR per loss, recomputed from the per-run
    results files (not the store): seed-averaged accuracies, then PGR per
    pair, then the median over pairs whose ceiling beats the weak model."""
    from w2s_jax.report.__main__ import write_report
    report = write_report(workdir)
    runs = []
    for name in os.listdir(os.path.join(workdir, "results")):
        if name.endswith(".json"):
            with open(os.path.join(workdir, "results", name)) as f:
                runs.append(json.load(f))
    for loss in ("xent", "logconf"):
        pgrs = []
        for pair in {tuple(r["models"]) for r in runs}:
            mine = [r for r in runs if tuple(r["models"]) == pair
                    and r["loss"] == loss]
            assert len(mine) == 2  # two seeds
            acc = {stage: sum(r["gold_test"][stage]["accuracy"] for r in mine) / 2
                   for stage in ("weak", "w2s", "ceiling")}
            if acc["ceiling"] > acc["weak"]:
                pgrs.append((acc["w2s"] - acc["weak"]) / (acc["ceiling"] - acc["weak"]))
        pgrs.sort()
        mid = len(pgrs) // 2
        expected = pgrs[mid] if len(pgrs) % 2 else (pgrs[mid - 1] + pgrs[mid]) / 2
        row = next(m for m in report["data"]["medians"]
                   if (m["task"], m["loss"]) == ("all", loss))
        assert row["n_pairs"] == len(pgrs) and row["n_excluded"] == 3 - len(pgrs)
        assert row["median_pgr"] == pytest.approx(expected)
    assert os.path.isfile(os.path.join(workdir, "report", "report.html"))


CONFIG_FILE = """
from w2s_jax import config as config_lib

def get_config():
    config = config_lib.base_config()
    config.task, config.data_dir = "sst2", {mirror!r}
    config.n_train, config.n_test, config.max_ctx = 384, 128, 32
    config.train.epochs, config.train.log_every = 2, 100
    config.weak = config_lib.model_config("bow-tfidf", mode="features")
    config.strong = config_lib.model_config("tiny-gpt2-random", mode="features")
    config.grid.ladder = {ladder!r}
    config.seeds, config.losses = "0,1", "xent,logconf"
    return config
"""


def test_two_shards_at_once_match_one_process(mirror, tmp_path):
    config_file = tmp_path / "grid_config.py"
    config_file.write_text(CONFIG_FILE.format(mirror=mirror, ladder=LADDER))
    shared = str(tmp_path / "shared")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "w2s_jax.main", f"--config={config_file}",
         f"--workdir={shared}", f"--shard={i}/2"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    written = [line for out, _ in outputs for line in _written(out)]
    stage_dirs = os.listdir(os.path.join(shared, "stages"))
    # Every stage computed by exactly one of the two shards.
    assert len(written) == len(stage_dirs)
    assert not any("another process stored" in out for out, _ in outputs)

    single = run_alone(config_file, str(tmp_path / "alone"), env)
    assert_same_runs(_store(shared), single)


def run_alone(config_file, workdir, env) -> dict:
    """The grid in one process; its result store's records by run id."""
    proc = subprocess.run(
        [sys.executable, "-m", "w2s_jax.main", f"--config={config_file}",
         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _store(workdir)


def assert_same_runs(sharded: dict, single: dict) -> None:
    """Sharded runs gave the one-process grid's 12 runs and results."""
    assert sorted(sharded) == sorted(single) and len(single) == 12
    for run_id, record in single.items():
        assert sharded[run_id]["gold_test"] == record["gold_test"]
        assert sharded[run_id]["comparisons"] == record["comparisons"]
