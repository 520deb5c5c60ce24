"""Diagnostics against hand computations on small arrays, the low-signal
warning, and the diagnostics of a tiny end-to-end w2s run recomputed from
the stages' stored arrays."""
import logging
import math
import types

import numpy as np
import pytest

from w2s_jax import run
from w2s_jax.experiment import setup
from w2s_jax.experiment.stage import train_stage
from w2s_jax.report import diagnostics, metrics, results as results_lib, summary
from w2s_jax.train import labels as labels_lib

from test_recipes import _bow, _config, _frozen, _stage, check_results_from_arrays, mirror  # noqa: F401


def test_ece_matches_a_hand_computation():
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.35, 0.65], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1])
    # Bins of width 0.1: {0.95, 0.95} in [0.9, 1] with accuracy 1/2;
    # {0.65} in [0.6, 0.7), right; {0.55} in [0.5, 0.6), wrong.
    expected = (2 * abs(0.5 - 0.95) + abs(1 - 0.65) + abs(0 - 0.55)) / 4
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(expected)


def _percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_bootstrap_pgr_matches_a_loop_over_resamples():
    rng = np.random.default_rng(7)
    n = 60
    sup = rng.random(n) < 0.6
    student = rng.random(n) < 0.7
    ceiling = rng.random(n) < 0.8
    got = diagnostics.bootstrap_pgr(sup, student, ceiling, n_resamples=200, seed=3)
    # The same index draws, then each resample by plain Python sums.
    draws = np.random.default_rng(3).integers(0, n, size=(200, n))
    pgrs, undefined = [], 0
    for row in draws:
        a = [sum(int(c[i]) for i in row) / n for c in (sup, student, ceiling)]
        if a[2] > a[0]:
            pgrs.append((a[1] - a[0]) / (a[2] - a[0]))
        else:
            undefined += 1
    pgrs.sort()
    assert got["n_undefined"] == undefined
    assert got["low"] == pytest.approx(_percentile(pgrs, 2.5))
    assert got["high"] == pytest.approx(_percentile(pgrs, 97.5))
    point = metrics.pgr(sup.mean(), student.mean(), ceiling.mean())
    assert got["low"] < point < got["high"]
    # Fixed seed: the same interval every time.
    assert diagnostics.bootstrap_pgr(sup, student, ceiling, n_resamples=200, seed=3) == got


def test_bootstrap_pgr_counts_undefined_resamples():
    same = np.array([1, 0, 1, 1, 0], bool)
    got = diagnostics.bootstrap_pgr(same, same, same, n_resamples=50)
    assert got["n_undefined"] == 50 and got["low"] is None and got["high"] is None


def test_seed_interval_is_a_t_interval():
    got = diagnostics.seed_interval([0.5, None, 0.7, 0.9])
    # mean 0.7, s = 0.2, n = 3: t_{2, 0.975} = 4.302653.
    half = 4.302652729749464 * 0.2 / math.sqrt(3)
    assert (got["low"], got["high"]) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))
    assert (got["n"], got["n_total"], got["method"]) == (3, 4, "t")
    assert diagnostics.seed_interval([0.4, None])["low"] is None


def test_misfit_matches_a_hand_computation():
    weak = np.array([[0.8, 0.2], [0.4, 0.6]])
    student = np.array([[0.5, 0.5], [0.9, 0.1]])
    kl = ((0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5))
          + (0.4 * math.log(0.4 / 0.9) + 0.6 * math.log(0.6 / 0.1))) / 2
    ce = (-(0.8 * math.log(0.5) + 0.2 * math.log(0.5))
          - (0.4 * math.log(0.9) + 0.6 * math.log(0.1))) / 2
    got = diagnostics.misfit(student, weak)
    assert got["kl"] == pytest.approx(kl)
    assert got["cross_entropy"] == pytest.approx(ce)
    # Row 1: both argmax 0 (the student's tie goes to class 0); row 2 differs.
    assert got["disagreement"] == pytest.approx(0.5) and got["n"] == 2
    assert diagnostics.misfit(weak, weak)["kl"] == pytest.approx(0.0, abs=1e-12)


def test_error_kappa_matches_a_contingency_table():
    sup = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    student = np.array([1, 1, 0, 0, 0, 1, 1, 1], bool)
    # 2x2 table of (sup, student): both right 3, sup only 1, student only 2,
    # both wrong 2; kappa = (p_o - p_e) / (1 - p_e) from the margins.
    both_right, sup_only, student_only, both_wrong = 3, 1, 2, 2
    n = 8
    p_o = (both_right + both_wrong) / n
    p_e = ((both_right + sup_only) * (both_right + student_only)
           + (student_only + both_wrong) * (sup_only + both_wrong)) / n ** 2
    got = diagnostics.error_kappa(sup, student)
    assert got["observed"] == pytest.approx(p_o)
    assert got["expected"] == pytest.approx(p_e)
    assert got["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert diagnostics.error_kappa(sup, sup)["kappa"] == pytest.approx(1.0)
    assert diagnostics.error_kappa(np.ones(4, bool), np.ones(4, bool))["kappa"] is None


def _fake_output(weak_b):
    """Stages and a misfit entry as build_results sees them."""
    def stage(confidence):
        return types.SimpleNamespace(
            record={"targets_quality": {"mean_confidence": confidence}},
            arrays={"test_probs": np.full((4, 2), 0.5)})
    output = types.SimpleNamespace(stages={
        "weak": stage(1.0), "w2s": stage(float(weak_b.max(-1).mean())),
        "ceiling": stage(1.0)})
    comparisons = {"w2s": {"student": "w2s", "misfit": {
        "supervisor_label_signal": diagnostics.label_signal(weak_b)}}}
    return output, comparisons


def test_low_signal_warning_fires_on_flat_labels_only(caplog):
    # The case: weak labels within 0.36-0.61.
    p1 = np.array([0.36, 0.45, 0.52, 0.61, 0.55, 0.40])
    flat = np.stack([1 - p1, p1], -1)
    signal = float(np.mean(np.abs(p1 - 0.5)))
    assert diagnostics.label_signal(flat) == pytest.approx(signal)
    with caplog.at_level(logging.WARNING, logger="w2s_jax.report.results"):
        got = results_lib._label_signal(*_fake_output(flat))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one per run, listing every source
    assert f"{signal:.3f}" in warnings[0].getMessage()
    assert got["supervisor_labels"]["w2s"] == pytest.approx(signal)
    assert got["stage_targets"]["w2s"] == pytest.approx(signal)
    assert got["low"] == [f"w2s trained on targets with signal {signal:.3f}"]
    assert got["threshold"] == 0.1
    # Hard labels handed off hide flat weak labels: the comparison shows them.
    output, comparisons = _fake_output(flat)
    output.stages["w2s"].record["targets_quality"]["mean_confidence"] = 1.0
    got = results_lib._label_signal(output, comparisons)
    assert got["low"] == [f"comparison w2s: the supervisor's soft labels "
                          f"have signal {signal:.3f}"]
    caplog.clear()
    p1 = np.array([0.05, 0.9, 0.2, 0.85])
    confident = np.stack([1 - p1, p1], -1)
    with caplog.at_level(logging.WARNING, logger="w2s_jax.report.results"):
        got = results_lib._label_signal(*_fake_output(confident))
    assert not caplog.records and got["low"] == []


def test_sweep_summary_has_seed_intervals_and_diagnostic_spreads():
    def one(seed, accs, pgr, kappa, kl):
        gold = {n: {"accuracy": a, "auroc": a, "ece": 0.1}
                for n, a in zip(("weak", "w2s", "ceiling"), accs)}
        agree = {"overall": 0.8, "weak_correct": 0.9, "weak_wrong": 0.4}
        return {"recipe": "w2s", "task": "sst2", "models": ["a", "b"], "seed": seed,
                "stage_order": ["weak", "w2s", "ceiling"], "comparison_order": ["w2s"],
                "loss": "xent", "gold_test": gold,
                "stages": {n: {"key": f"{n}{seed}"} for n in gold},
                "comparisons": {"w2s": {
                    "supervisor": "weak", "student": "w2s", "ceiling": "ceiling",
                    "pgr": {"accuracy": pgr, "auroc": pgr}, "agreement": agree,
                    "error_kappa": {"kappa": kappa},
                    "misfit": {"kl": kl, "disagreement": 0.2}}}}
    runs = {"xent": [one(0, (0.6, 0.7, 0.8), 0.5, 0.2, 0.1),
                     one(1, (0.6, 0.75, 0.8), 0.75, 0.4, 0.3),
                     one(2, (0.6, 0.8, 0.8), 1.0, 0.6, 0.5)]}
    out = summary.summarize(runs)
    comp = out["losses"]["xent"]["comparisons"]["w2s"]
    half = 4.302652729749464 * 0.25 / math.sqrt(3)
    assert comp["accuracy"]["pgr_seed_interval"]["low"] == pytest.approx(0.75 - half)
    assert comp["error_kappa"]["mean"] == pytest.approx(0.4)
    assert comp["misfit"]["kl"]["mean"] == pytest.approx(0.3)
    assert out["losses"]["xent"]["stages"]["w2s"]["test_ece"]["mean"] == pytest.approx(0.1)
    table = summary.summary_table(out)
    assert f"[{0.75 - half:.2f}, {0.75 + half:.2f}]" in table


def _ece_by_hand(probs, labels):
    conf, right = probs.max(-1), probs.argmax(-1) == labels
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        mask = (conf >= lo) & ((conf < hi) if b < 9 else (conf <= hi))
        if mask.any():
            total += mask.sum() * abs(right[mask].mean() - conf[mask].mean())
    return total / len(labels)


def test_w2s_run_diagnostics_recompute_from_stored_arrays(mirror, tmp_path):  # noqa: F811
    config = _config(mirror, _bow(), _frozen(), loss="xent")
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)
    some = arrays["weak"]
    gold = np.where(some["test_correct"], some["test_hard"], 1 - some["test_hard"])
    for name, arr in arrays.items():
        assert results["gold_test"][name]["ece"] == pytest.approx(
            _ece_by_hand(arr["test_probs"].astype(np.float64), gold))
    comp = results["comparisons"]["w2s"]
    correct = {r: arrays[comp[r]]["test_probs"].argmax(-1) == gold
               for r in ("supervisor", "student", "ceiling")}
    assert comp["pgr_bootstrap"]["accuracy"] == diagnostics.bootstrap_pgr(
        correct["supervisor"], correct["student"], correct["ceiling"])
    a, b = correct["supervisor"], correct["student"]
    p_o = np.mean(a == b)
    p_e = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
    assert comp["error_kappa"]["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    # Misfit: the student's predictions on exactly half B vs the weak labels.
    weak_b = arrays["weak"]["B_probs"].astype(np.float64)
    student_b = arrays["w2s"]["train_probs"].astype(np.float64)
    assert student_b.shape == weak_b.shape
    kl = np.mean(np.sum(weak_b * (np.log(weak_b) - np.log(student_b)), -1))
    fit = comp["misfit"]
    assert fit["kl"] == pytest.approx(kl, rel=1e-5)
    assert fit["disagreement"] == pytest.approx(
        np.mean(weak_b.argmax(-1) != student_b.argmax(-1)))
    signal = np.mean(np.abs(weak_b[:, 1] - 0.5))
    assert fit["supervisor_label_signal"] == pytest.approx(signal)
    assert results["label_signal"]["stage_targets"]["w2s"] == pytest.approx(signal, rel=1e-5)
    ctx = setup.build(config, workdir)
    half_a, half_b = ctx.halves()
    w2s_record = _stage(workdir, results, "w2s")[0]
    assert w2s_record["spec"]["predict_data"]["train"][0] == \
        ctx.learner(1).fingerprint("train", half_b)
    table = run.table(results)
    assert "Diagnostics" in table and "test ECE" in table
    # Predicting half B changes the stage's key, not its training: the same
    # stage without the predict set gives the same test predictions.
    bare = train_stage(ctx, "w2s", ctx.learner(1), train_idx=half_b,
                       targets=labels_lib.hand_off(arrays["weak"]["B_probs"], "soft"),
                       loss_name="xent", model_index=1, description="no predict set")
    assert bare.key != results["stages"]["w2s"]["key"]
    np.testing.assert_array_equal(bare.arrays["test_probs"], arrays["w2s"]["test_probs"])


def test_by_level_matches_a_hand_count():
    correct = [True, False, True, True, False]
    levels = ["hard", "hard", "easy", "hard", "easy"]
    assert diagnostics.by_level(correct, levels) == {
        "easy": {"n": 2, "accuracy": 0.5},
        "hard": {"n": 3, "accuracy": pytest.approx(2 / 3)}}


def test_accuracy_by_difficulty_recomputes_from_stored_arrays(
        mirror, tmp_path, monkeypatch):  # noqa: F811
    """A task with a difficulty field (here sst2 given one: the film's
    number) gets accuracy per level for every stage and PGR per level."""
    import dataclasses

    from w2s_jax.data import tasks
    spec = tasks.TASKS["sst2"]
    monkeypatch.setitem(tasks.TASKS, "sst2", dataclasses.replace(
        spec, difficulty=lambda row: "odd" if row["idx"] % 2 else "even"))
    config = _config(mirror, _bow(), _frozen(), loss="xent")
    out = run.run(config, str(tmp_path))
    by = out["accuracy_by_difficulty"]
    ctx = setup.build(config, str(tmp_path))
    # The level of each kept test example, from its own text ("number <idx>").
    numbers = np.array([int(t.rsplit(" ", 1)[1]) for t in ctx.texts["test"]])
    levels = np.where(numbers % 2, "odd", "even")
    np.testing.assert_array_equal(ctx.test_difficulty, levels)
    accuracy = {}
    for name in ("weak", "w2s", "ceiling"):
        _, arrays = _stage(str(tmp_path), out, name)
        right = arrays["test_probs"].argmax(-1) == ctx.test_labels
        accuracy[name] = {}
        for level in ("even", "odd"):
            accuracy[name][level] = right[levels == level].mean()
            assert by["stages"][name][level] == {
                "n": int((levels == level).sum()),
                "accuracy": pytest.approx(accuracy[name][level])}
    for level in ("even", "odd"):
        weak, w2s, ceiling = (accuracy[s][level] for s in ("weak", "w2s", "ceiling"))
        expected = (w2s - weak) / (ceiling - weak) if ceiling > weak else None
        assert by["pgr"]["w2s"][level] == (pytest.approx(expected)
                                           if expected is not None else None)
    assert "Accuracy by difficulty level" in run.table(out)
