"""Metrics against hand counts and brute force."""
import math

import numpy as np
import pytest

from w2s_jax.report import metrics


def _brute_force_auroc(scores, labels):
    """Count every positive/negative pair: a win is 1, a tie 1/2."""
    pos = [s for s, l in zip(scores, labels) if l == 1]
    neg = [s for s, l in zip(scores, labels) if l == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_by_hand():
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs won.
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # Positives 0.5, 0.9 vs negatives 0.5, 0.5: two ties (1) + two wins (2).
    assert metrics.auroc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == 0.75
    assert metrics.auroc([0.3, 0.3, 0.3], [0, 1, 1]) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    # Few distinct score values, so most pairs involve ties.
    scores = rng.integers(0, 6, size=40) / 5.0
    labels = rng.integers(0, 2, size=40)
    assert metrics.auroc(scores, labels) == pytest.approx(
        _brute_force_auroc(scores.tolist(), labels.tolist()), abs=1e-12)


def test_auroc_single_class_is_nan():
    assert math.isnan(metrics.auroc([0.2, 0.9], [1, 1]))
    assert math.isnan(metrics.auroc([0.2, 0.9], [0, 0]))


def test_accuracy_by_hand():
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]
    # argmax: 0, 1, 0, 0 (the tie goes to class 0) vs labels 0, 1, 1, 0.
    assert metrics.accuracy(probs, [0, 1, 1, 0]) == 0.75
    assert metrics.accuracy(np.eye(3), [0, 1, 2]) == 1.0


def test_pgr():
    assert metrics.pgr(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert metrics.pgr(0.6, 0.8, 0.8) == pytest.approx(1.0)
    assert metrics.pgr(0.6, 0.5, 0.8) == pytest.approx(-0.5)
    assert metrics.pgr(0.6, 0.7, 0.6) is None
    assert metrics.pgr(0.6, 0.7, 0.55) is None
    assert metrics.pgr(0.6, float("nan"), 0.8) is None


def test_agreement_breakdown():
    gold = [0, 1, 1, 0, 1]
    supervisor = np.eye(2)[[0, 1, 0, 1, 1]]  # right, right, wrong, wrong, right
    student = np.eye(2)[[0, 0, 0, 0, 1]]
    # Agrees on rows 0, 2, 4; over right rows (0, 1, 4) 2 of 3, wrong (2, 3) 1 of 2.
    got = metrics.agreement(student, supervisor, gold)
    assert got == {"overall": pytest.approx(0.6),
                   "weak_correct": pytest.approx(2 / 3),
                   "weak_wrong": pytest.approx(0.5),
                   "n_weak_correct": 3, "n_weak_wrong": 2}


def test_agreement_empty_subset_is_none():
    supervisor = np.eye(2)[[0, 1]]
    got = metrics.agreement(supervisor, supervisor, [0, 1])
    assert got["overall"] == 1.0 and got["weak_correct"] == 1.0
    assert got["weak_wrong"] is None and got["n_weak_wrong"] == 0


def test_summarize_predictions():
    probs = [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]]
    # argmax 0, 1, 0, 1 vs labels 0, 1, 1, 0 -> 0.5; class-1 scores of
    # positives 0.7, 0.4 vs negatives 0.1, 0.8 -> wins (0.7>0.1), (0.4>0.1).
    got = metrics.summarize_predictions(probs, [0, 1, 1, 0])
    assert got == {"accuracy": 0.5, "auroc": 0.5, "n": 4}
    # K > 2: macro one-vs-rest; a perfect one-hot ranking scores 1.
    assert metrics.summarize_predictions(np.eye(3), [0, 1, 2])["auroc"] == 1.0


def test_expected_calibration_error_by_hand():
    # Bin [0.9, 1]: confidences 0.9 and 1.0 (mean 0.95), one right: |0.5 - 0.95|.
    # Bin [0.6, 0.7): confidence 0.6, right: |1 - 0.6|. N = 3.
    probs = [[0.1, 0.9], [1.0, 0.0], [0.4, 0.6]]
    labels = [1, 1, 1]
    expected = (2 * abs(0.5 - 0.95) + 1 * abs(1.0 - 0.6)) / 3
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert metrics.expected_calibration_error([[0.0, 1.0]] * 4, [1] * 4) == 0.0


def test_macro_auroc_is_the_mean_of_one_vs_rest_pair_counts():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6],
                      [0.4, 0.4, 0.2], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    labels = np.array([0, 1, 2, 1, 2, 0])
    per_class = [_brute_force_auroc(probs[:, c].tolist(), (labels == c).tolist())
                 for c in range(3)]
    assert metrics.macro_auroc(probs, labels) == pytest.approx(np.mean(per_class))
    # Class 0: positives .7, .5 beat every negative (.2 .1 .4 .3) -> 1.0.
    assert per_class[0] == 1.0
    assert metrics.summarize_predictions(probs, labels)["auroc"] == pytest.approx(
        np.mean(per_class))
    # A class absent from the labels is skipped, not counted as undefined.
    assert metrics.macro_auroc(probs[:, :3], np.array([0, 1, 1, 0, 1, 0])) == \
        pytest.approx(np.mean([_brute_force_auroc(probs[:, c].tolist(),
                                                  (np.array([0, 1, 1, 0, 1, 0]) == c).tolist())
                               for c in (0, 1)]))
