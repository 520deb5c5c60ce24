"""`python -m w2s_jax.report` on a store written by hand: the numbers are
recomputed here from the records (seed-average accuracies first, then PGR,
then the median over the pairs whose ceiling beats weak), and every file
the report promises is checked to be there and readable."""
import json
import os
import statistics
import subprocess
import sys

import pytest

from w2s_jax.core import errors
from w2s_jax.report.__main__ import write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PARAMS = {"tiny-a": 1_000, "tiny-b": 10_000, "tiny-c": 100_000}
# (task, weak, strong, loss) -> per seed (weak, student, ceiling) accuracy.
# Denominators differ between seeds, so the PGR of seed means and the mean
# of per-seed PGRs differ (checked below), as do their medians.
ACCURACIES = {
    ("t1", "tiny-a", "tiny-b", "xent"): [(.60, .66, .70), (.62, .64, .80)],
    ("t1", "tiny-a", "tiny-b", "logconf"): [(.60, .68, .70), (.62, .75, .80)],
    ("t1", "tiny-a", "tiny-c", "xent"): [(.60, .70, .90), (.62, .69, .84)],
    ("t1", "tiny-a", "tiny-c", "logconf"): [(.60, .80, .90), (.62, .70, .84)],
    ("t1", "tiny-b", "tiny-c", "xent"): [(.70, .72, .90), (.80, .83, .84)],
    ("t1", "tiny-b", "tiny-c", "logconf"): [(.70, .85, .90), (.80, .81, .84)],
    ("t2", "tiny-a", "tiny-b", "xent"): [(.50, .55, .60), (.52, .60, .70)],
    ("t2", "tiny-a", "tiny-b", "logconf"): [(.50, .58, .60), (.52, .57, .70)],
    # The ceiling does not beat weak (on average): excluded, and counted.
    ("t2", "tiny-a", "tiny-c", "xent"): [(.70, .69, .68), (.72, .70, .73)],
    ("t2", "tiny-a", "tiny-c", "logconf"): [(.70, .71, .68), (.72, .73, .73)],
}
CHAIN = [  # bootstrap seeds: weak, link2, link3, direct, ceiling
    {"weak": .60, "link2": .70, "link3": .78, "direct": .74, "ceiling": .90},
    {"weak": .62, "link2": .74, "link3": .80, "direct": .70, "ceiling": .86},
]


def _w2s_record(key, seed, accs):
    task, weak, strong, loss = key
    w, s, c = accs
    return {
        "run_id": f"{task}-{weak}-{strong}-{loss}-{seed}",
        "finished": "2026-12-01T20:00:00Z", "task": task, "recipe": "w2s",
        "loss": loss, "seed": seed, "models": [weak, strong],
        "model_params": PARAMS,
        "stage_models": {"weak": weak, "ceiling": strong, "w2s": strong},
        "gold_test": {"weak": {"accuracy": w}, "ceiling": {"accuracy": c},
                      "w2s": {"accuracy": s}},
        "comparisons": {"w2s": {
            "supervisor": "weak", "student": "w2s", "ceiling": "ceiling",
            "agreement": {"overall": .9, "weak_correct": .95,
                          "weak_wrong": .3 + .1 * seed}}},
        "loss_curves": {"weak": [.7, .6, .5], "ceiling": [.7, .4],
                        "w2s": [.69, .62, .6, .58]},
        "config": {}}


def _bootstrap_record(seed, accs):
    stage_models = {"weak": "tiny-a", "link2": "tiny-b", "link3": "tiny-c",
                    "direct": "tiny-c", "ceiling": "tiny-c"}
    return {
        "run_id": f"boot-{seed}", "task": "t1", "recipe": "bootstrap",
        "loss": "xent", "seed": seed, "models": list(PARAMS),
        "model_params": PARAMS, "stage_models": stage_models,
        "gold_test": {k: {"accuracy": v} for k, v in accs.items()},
        "comparisons": {
            "chain": {"supervisor": "weak", "student": "link3",
                      "ceiling": "ceiling"},
            "direct": {"supervisor": "weak", "student": "direct",
                       "ceiling": "ceiling"}},
        "loss_curves": {}, "config": {}}


def _write_store(workdir, extra_lines=()):
    lines = [json.dumps(_w2s_record(key, seed, accs))
             for key, seeds in ACCURACIES.items()
             for seed, accs in enumerate(seeds)]
    lines += [json.dumps(_bootstrap_record(seed, accs))
              for seed, accs in enumerate(CHAIN)]
    os.makedirs(os.path.join(workdir, "store"))
    with open(os.path.join(workdir, "store", "index.jsonl"), "w") as f:
        f.write("\n".join([*lines, *extra_lines]) + "\n")


def _pgr(w, s, c):
    return (s - w) / (c - w)


def _seed_mean_pgr(seeds):
    """The paper's convention, by hand: average each accuracy over seeds,
    then PGR; None where the mean ceiling does not beat the mean weak."""
    w, s, c = (statistics.mean(a[i] for a in seeds) for i in range(3))
    return _pgr(w, s, c) if c > w else None


def _expected_medians(task=None):
    out = {}
    for loss in ("xent", "logconf"):
        pgrs = [_seed_mean_pgr(seeds) for key, seeds in ACCURACIES.items()
                if key[3] == loss and task in (None, key[0])]
        included = [p for p in pgrs if p is not None]
        out[loss] = (statistics.median(included), len(included),
                     len(pgrs) - len(included))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("work"))
    _write_store(workdir, extra_lines=['{"cut short'])
    return workdir, write_report(workdir)


def test_fixture_tells_the_pgr_conventions_apart():
    for loss in ("xent", "logconf"):
        mean_of_pgrs = statistics.median(
            statistics.mean(_pgr(*a) for a in seeds)
            for key, seeds in ACCURACIES.items()
            if key[3] == loss and _seed_mean_pgr(seeds) is not None)
        assert abs(mean_of_pgrs - _expected_medians()[loss][0]) > 1e-3


def test_median_pgr_per_loss_and_excluded_count(report):
    _, result = report
    got = {(m["task"], m["loss"]): m for m in result["data"]["medians"]}
    for task in (None, "t1", "t2"):
        for loss, (median, n_in, n_out) in _expected_medians(task).items():
            row = got[(task or "all", loss)]
            assert row["median_pgr"] == pytest.approx(median, abs=1e-12)
            assert (row["n_pairs"], row["n_excluded"]) == (n_in, n_out)
    assert got[("all", "xent")]["n_excluded"] == 1
    assert got[("t2", "logconf")]["n_excluded"] == 1


def test_per_pair_means_and_seed_spreads(report):
    _, result = report
    pairs = {(p["task"], p["weak"], p["strong"], p["loss"]): p
             for p in result["data"]["pairs"]}
    assert set(pairs) == set(ACCURACIES)
    for key, seeds in ACCURACIES.items():
        row = pairs[key]
        assert row["n_seeds"] == 2
        assert row["weak_acc"] == pytest.approx(
            statistics.mean(a[0] for a in seeds))
        assert row["student_acc_std"] == pytest.approx(
            statistics.stdev(a[1] for a in seeds))
        per_seed = [_pgr(*a) for a in seeds if a[2] > a[0]]
        assert row["pgr_seed_n"] == len(per_seed)
        if len(per_seed) > 1:
            assert row["pgr_seed_std"] == pytest.approx(
                statistics.stdev(per_seed))
            assert row["pgr_seed_min"] == pytest.approx(min(per_seed))
        expected = _seed_mean_pgr(seeds)
        if expected is None:
            assert row["pgr"] is None and row["excluded"]
        else:
            assert row["pgr"] == pytest.approx(expected)
    assert pairs[("t1", "tiny-a", "tiny-c", "xent")]["param_ratio"] == 100
    assert pairs[("t1", "tiny-a", "tiny-b", "xent")]["agree_weak_wrong"] \
        == pytest.approx(.35)


def test_bootstrap_chain_is_seed_averaged_in_link_order(report):
    _, result = report
    (chain,) = result["data"]["bootstrap"]
    mean = {k: statistics.mean(s[k] for s in CHAIN) for k in CHAIN[0]}
    assert [e["model"] for e in chain["chain"]] == list(PARAMS)
    assert [e["acc"] for e in chain["chain"]] == pytest.approx(
        [mean["weak"], mean["link2"], mean["link3"]])
    assert chain["direct"]["acc"] == pytest.approx(mean["direct"])
    assert chain["pgr"]["chain"] == pytest.approx(
        _pgr(mean["weak"], mean["link3"], mean["ceiling"]))


def test_files_pngs_and_self_contained_page(report):
    workdir, result = report
    out = os.path.join(workdir, "report")
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    # accuracy and agreement per task, pgr, bootstrap (t1), training.
    assert pngs == sorted([
        "accuracy_t1.png", "accuracy_t2.png", "agreement_t1.png",
        "agreement_t2.png", "pgr_vs_ratio.png", "bootstrap_t1.png",
        "training_t1.png", "training_t2.png"])
    for name in pngs:
        with open(os.path.join(out, name), "rb") as f:
            data = f.read()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temps
    page = open(os.path.join(out, "report.html")).read()
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert "<link" not in page and "<script" not in page
    median = _expected_medians()["xent"][0]
    assert "Median PGR per loss" in page and f"{median:.3f}" in page
    markdown = open(os.path.join(out, "report.md")).read()
    assert all(f"]({name})" in markdown for name in pngs)
    tables = json.load(open(os.path.join(out, "tables.json")))
    assert tables["skipped_lines"] == 1 and tables["runs"] == 22


def test_runs_of_other_settings_are_rows_of_their_own(tmp_path):
    """Two settings of one pair and loss (a grid's points), two seeds each:
    two rows of two seeds, each with its own PGR, never one of four."""
    from w2s_jax.report import aggregate
    records = []
    for alpha, accs in ((0.5, (.6, .7, .8)), (0.75, (.6, .62, .8))):
        for seed in (0, 1):
            r = _w2s_record(("t1", "a", "b", "logconf"), seed, accs)
            r["run_id"] += f"-{alpha}"
            r["config"] = {"seed": seed, "loss_params": {"alpha_max": alpha},
                           "train": {"epochs": 2}}
            records.append(r)
    pairs = aggregate.aggregate(records)["pairs"]
    assert [(p["setting"], p["n_seeds"]) for p in pairs] == [
        ("loss_params.alpha_max=0.5", 2), ("loss_params.alpha_max=0.75", 2)]
    assert [p["pgr"] for p in pairs] == [pytest.approx(.5), pytest.approx(.1)]


def test_plot_without_data_is_a_note(tmp_path):
    workdir = str(tmp_path)
    os.makedirs(os.path.join(workdir, "store"))
    with open(os.path.join(workdir, "store", "index.jsonl"), "w") as f:
        f.write(json.dumps(_bootstrap_record(0, CHAIN[0])) + "\n")
    result = write_report(workdir)
    assert "Not plotted:" in result["markdown"]
    assert "no w2s runs" in result["markdown"]
    assert os.path.exists(os.path.join(workdir, "report", "bootstrap_t1.png"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "w2s_jax.report", *args],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_command_line(tmp_path):
    workdir, out = str(tmp_path / "work"), str(tmp_path / "out")
    _write_store(workdir, extra_lines=["not json"])
    proc = _cli(f"--workdir={workdir}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    assert "| task | xent | logconf |" in proc.stdout
    assert os.path.join(out, "report.html") in proc.stdout
    assert "skipped 1 unreadable line" in proc.stderr
    tables = json.load(open(os.path.join(out, "tables.json")))
    got = {(m["task"], m["loss"]): m["median_pgr"] for m in tables["medians"]}
    assert got[("all", "logconf")] == pytest.approx(
        _expected_medians()["logconf"][0])


@pytest.mark.parametrize("content", [None, "", "garbage\n"])
def test_no_store_is_one_error_line(tmp_path, content):
    workdir = str(tmp_path)
    if content is not None:
        os.makedirs(os.path.join(workdir, "store"))
        with open(os.path.join(workdir, "store", "index.jsonl"), "w") as f:
            f.write(content)
    with pytest.raises(errors.ExpectedError):
        write_report(workdir)
    proc = _cli(f"--workdir={workdir}")
    lines = [line for line in proc.stderr.splitlines()
             if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.path.join(workdir, "store", "index.jsonl") in lines[0]
    assert "python -m w2s_jax.main" in lines[0]
    assert not os.path.exists(os.path.join(workdir, "report"))
