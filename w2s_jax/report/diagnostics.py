"""Diagnostics that say how far to trust a PGR and why a student did what it
did, as pure functions on host numpy arrays returning JSON-ready values.

- `bootstrap_pgr`: a 95% percentile interval for one run's PGR, resampling
  gold test examples (the same indices for all three models, so their
  accuracies stay paired) with a fixed seed.
- `seed_interval`: a Student-t interval for a mean over seeds (a sweep's
  per-seed PGRs); with 3-5 seeds a bootstrap over seeds has too few
  distinct resamples to mean anything, the t-interval is honest about that.
- `misfit` (Charikar et al. 2024): how far the student's predictions on its
  own training examples are from the weak labels it trained on; the theory
  says the gain over the supervisor is at least this misfit.
- `error_kappa`: Cohen's kappa on the two models' error indicators (as in
  Goel et al. 2025): how much more often supervisor and student are wrong
  on the same examples than their accuracies alone imply.
- `label_signal`: mean(max_c p_c) - 1/K of soft labels (binary: mean
  |p - 0.5|); below LOW_SIGNAL_THRESHOLD the labels barely say anything.
- `by_level`: accuracy per difficulty level of a task that ships one (a
  gain concentrated on easy items reads differently from one on hard items).
"""
from __future__ import annotations

import math

import numpy as np

# Binary: mean |p - 0.5| < 0.1, i.e. mean confidence under 0.6. A calibrated
# supervisor's accuracy about equals its mean confidence, so labels this
# flat come from a supervisor that is either under 60% accurate or badly
# under-confident; the example (MiniLM-L3 at 0.733 accuracy, signal
# 0.074) was the second, and its student collapsed (PGR -1.33).
LOW_SIGNAL_THRESHOLD = 0.1
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95


def bootstrap_pgr(supervisor_correct, student_correct, ceiling_correct, *,
                  n_resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> dict:
    """Percentile interval of PGR (accuracy) over test-example resamples.

    Inputs are per-example 0/1 correctness of the three models on the same
    test examples. Each resample draws n indices with replacement, recomputes
    the three accuracies and PGR; resamples where PGR is undefined (ceiling
    not above supervisor) are counted in `n_undefined` and left out of the
    interval. `low`/`high` are None when no resample is defined.
    """
    correct = np.stack([np.asarray(c, np.float64) for c in
                        (supervisor_correct, student_correct, ceiling_correct)])
    n = correct.shape[1]
    out = {"low": None, "high": None, "level": level, "seed": seed,
           "n_resamples": n_resamples, "n_undefined": n_resamples}
    if n == 0:
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    sup, student, ceiling = (correct[k][idx].mean(axis=1) for k in range(3))
    defined = ceiling > sup
    pgrs = (student[defined] - sup[defined]) / (ceiling[defined] - sup[defined])
    out["n_undefined"] = int(n_resamples - defined.sum())
    if len(pgrs):
        tail = 100 * (1 - level) / 2
        out["low"], out["high"] = (float(v) for v in
                                   np.percentile(pgrs, [tail, 100 - tail]))
    return out


def seed_interval(values, level: float = LEVEL) -> dict:
    """mean ± t_{n-1, (1+level)/2} * s / sqrt(n) over the defined values
    (None left out); low/high None for fewer than two."""
    from scipy import stats

    defined = np.asarray([v for v in values if v is not None], np.float64)
    out = {"low": None, "high": None, "level": level, "method": "t",
           "n": int(len(defined)), "n_total": len(values)}
    if len(defined) > 1:
        half = (stats.t.ppf((1 + level) / 2, len(defined) - 1)
                * defined.std(ddof=1) / math.sqrt(len(defined)))
        out["low"] = float(defined.mean() - half)
        out["high"] = float(defined.mean() + half)
    return out


def misfit(student_probs, weak_probs, eps: float = 1e-12) -> dict:
    """Student's predictions vs the weak labels on the same examples.

    `kl`: mean KL(weak || student); `cross_entropy`: mean CE(weak, student)
    (= kl + the weak labels' mean entropy); `disagreement`: fraction of
    examples whose argmax differs.
    """
    q = np.asarray(student_probs, np.float64)
    p = np.asarray(weak_probs, np.float64)
    if len(p) == 0:
        return {"kl": None, "cross_entropy": None, "disagreement": None, "n": 0}
    log_q = np.log(np.clip(q, eps, None))
    p_log_p = np.where(p > 0, p * np.log(np.clip(p, eps, None)), 0.0)
    cross_entropy = -(p * log_q).sum(-1)
    return {"kl": float(np.mean(p_log_p.sum(-1) + cross_entropy)),
            "cross_entropy": float(np.mean(cross_entropy)),
            "disagreement": float(np.mean(p.argmax(-1) != q.argmax(-1))),
            "n": int(len(p))}


def error_kappa(supervisor_correct, student_correct) -> dict:
    """Cohen's kappa on error indicators: (observed - expected) /
    (1 - expected), observed = P(both right or both wrong), expected = the
    same under independence given the two accuracies. 0: errors no more
    shared than chance; 1: wrong on exactly the same examples. None where
    expected is 1 (a model always right or always wrong)."""
    a = np.asarray(supervisor_correct, bool)
    b = np.asarray(student_correct, bool)
    if len(a) == 0:
        return {"observed": None, "expected": None, "kappa": None}
    acc_a, acc_b = a.mean(), b.mean()
    observed = float(np.mean(a == b))
    expected = float(acc_a * acc_b + (1 - acc_a) * (1 - acc_b))
    kappa = None if expected >= 1 else (observed - expected) / (1 - expected)
    return {"observed": observed, "expected": expected,
            "kappa": None if kappa is None else float(kappa)}


def label_signal(probs) -> float:
    """mean(max_c p_c) - 1/K: 0 for uniform labels, 1 - 1/K for one-hots."""
    probs = np.asarray(probs, np.float64)
    if len(probs) == 0:
        return float("nan")
    return float(probs.max(-1).mean() - 1.0 / probs.shape[-1])



def by_level(correct, levels) -> dict:
    """{level: {"n", "accuracy"}} of right/wrong `correct` [N] grouped by
    `levels` [N] (strings), levels in sorted order."""
    correct, levels = np.asarray(correct, bool), np.asarray(levels)
    return {str(level): {"n": int(np.sum(levels == level)),
                         "accuracy": float(np.mean(correct[levels == level]))}
            for level in sorted(set(levels.tolist()))}
