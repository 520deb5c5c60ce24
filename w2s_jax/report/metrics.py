"""Evaluation metrics on host numpy arrays (w2s_facts.md section 1).

Pure functions returning plain Python numbers, so results go straight into
JSON records. Hard predictions are argmax over classes; np.argmax breaks
ties towards the lower class index, so an all-equal row predicts class 0.
"""
from __future__ import annotations

import math

import numpy as np


def accuracy(probs, labels) -> float:
    """Fraction of rows whose argmax equals the integer label."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probs, axis=-1) == labels))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    # A run covering 0-based positions [s, e) holds ranks s+1..e, mean (s+1+e)/2.
    run_ranks = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def auroc(scores, labels) -> float:
    """Area under the ROC curve of class-1 scores, via Mann-Whitney U.

    Equals P(score_pos > score_neg) + 0.5 P(tie) over all positive/negative
    pairs. NaN when only one class is present (the area is undefined).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[labels].sum()
    u_stat = rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(u_stat / (n_pos * n_neg))


def macro_auroc(probs, labels) -> float:
    """K-way AUROC: the mean over classes of the one-vs-rest AUROC of that
    class's probability (classes absent from `labels` are skipped; NaN if
    fewer than two are present)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    per_class = [auroc(probs[:, c], labels == c) for c in range(probs.shape[1])
                 if 0 < np.sum(labels == c) < len(labels)]
    return float(np.mean(per_class)) if per_class else float("nan")


def pgr(weak, w2s, ceiling) -> float | None:
    """Performance gap recovered, (w2s - weak) / (ceiling - weak).

    None where the ceiling does not beat the weak model (the paper reports
    PGR only there) or where any input is not finite (e.g. an undefined
    AUROC), so a meaningless ratio never enters a median.
    """
    if not all(math.isfinite(v) for v in (weak, w2s, ceiling)):
        return None
    if ceiling <= weak:
        return None
    return float((w2s - weak) / (ceiling - weak))


def agreement(student_probs, supervisor_probs, gold_labels) -> dict:
    """Student-supervisor agreement of hard predictions, overall and split by
    whether the supervisor was right; rates over empty subsets are None.

    Agreement on examples the supervisor got wrong, above the student's
    ability, is the signature of imitating the supervisor's errors.
    """
    student = np.argmax(np.asarray(student_probs), axis=-1)
    supervisor = np.argmax(np.asarray(supervisor_probs), axis=-1)
    agree = student == supervisor
    weak_correct = supervisor == np.asarray(gold_labels)

    def rate(mask):
        return float(np.mean(agree[mask])) if mask.any() else None

    return {
        "overall": rate(np.ones_like(agree)),
        "weak_correct": rate(weak_correct),
        "weak_wrong": rate(~weak_correct),
        "n_weak_correct": int(weak_correct.sum()),
        "n_weak_wrong": int((~weak_correct).sum()),
    }


def expected_calibration_error(probs, labels, bins: int = 10) -> float:
    """ECE: the confidence-weighted gap between confidence (max_c p_c) and
    accuracy, over `bins` equal-width confidence bins (the last one closed):
    sum_b |B_b|/N |acc(B_b) - conf(B_b)|."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total / len(labels)) if len(labels) else float("nan")


def summarize_predictions(probs, labels) -> dict:
    """Accuracy, AUROC and count of one model's predictions on a split.

    AUROC: of the class-1 probability for a binary head; for K > 2 the
    macro one-vs-rest mean (macro_auroc).
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    binary = probs.ndim == 2 and probs.shape[1] == 2
    return {
        "accuracy": accuracy(probs, labels),
        "auroc": auroc(probs[:, 1], labels) if binary else macro_auroc(probs, labels),
        "n": int(len(labels)),
    }
