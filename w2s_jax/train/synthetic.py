"""Synthetic supervisors: gold labels corrupted by a seeded rule.

In place of a trained weak model, a rule decides which examples the
supervisor gets wrong, so the structure of its errors is known:

    flip               each example wrong with probability `error_rate`
    class_conditional  an example of gold class c wrong with probability
                       rates[c]; no rates = all errors on class 0, at the
                       rate that makes the overall rate `error_rate`
    length             errors only on examples longer (in characters) than
                       a threshold (a quantile of some reference lengths)
    keyword            errors only on examples a regex matches
                       (case-insensitive search)

For the systematic kinds (length, keyword) exactly round(error_rate * N)
matching examples, drawn at random, are wrong, or all of them when fewer
match: the realised rate is then lower than asked (`realised` reports it).
A wrong example gets another class, uniformly among the others. The
supervisor's soft label puts `confidence` on its chosen class and shares
the rest equally among the others (1.0 = hard one-hot labels).

Pure numpy; randomness only from the `rng` passed in.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

KINDS = ("flip", "class_conditional", "length", "keyword")


@dataclasses.dataclass(frozen=True)
class Rule:
    kind: str
    error_rate: float = 0.0
    rates: tuple[float, ...] = ()  # class_conditional: per gold class
    length_quantile: float = 0.5   # length: errors on lengths above this quantile
    keyword: str = ""              # keyword: a regex
    confidence: float = 1.0        # the soft label's probability of its class


def length_threshold(texts, quantile: float) -> float:
    """The `quantile` of the texts' character lengths (the length rule's
    cut: computed once, e.g. on the student's training set, and applied to
    every set the supervisor labels)."""
    return float(np.quantile([len(t) for t in texts], quantile))


def feature_mask(rule: Rule, texts, threshold: float | None = None):
    """Which examples carry the rule's feature (None for flip and
    class_conditional, which have none)."""
    if rule.kind == "length":
        if threshold is None:
            threshold = length_threshold(texts, rule.length_quantile)
        return np.array([len(t) > threshold for t in texts], bool)
    if rule.kind == "keyword":
        pattern = re.compile(rule.keyword, re.IGNORECASE)
        return np.array([pattern.search(t) is not None for t in texts], bool)
    return None


def error_mask(rule: Rule, labels: np.ndarray, feature: np.ndarray | None,
               rng: np.random.Generator, num_classes: int = 2) -> np.ndarray:
    """Which examples the supervisor gets wrong."""
    labels = np.asarray(labels)
    n = len(labels)
    if rule.kind == "flip":
        return rng.random(n) < rule.error_rate
    if rule.kind == "class_conditional":
        rates = np.asarray(class_rates(rule, labels, num_classes), np.float64)
        return rng.random(n) < rates[labels]
    if rule.kind in ("length", "keyword"):
        candidates = np.flatnonzero(feature)
        k = min(int(round(rule.error_rate * n)), len(candidates))
        wrong = np.zeros(n, bool)
        wrong[rng.choice(candidates, size=k, replace=False)] = True
        return wrong
    raise ValueError(f"synthetic kind {rule.kind!r} is not valid; choose one "
                     f"of: {', '.join(KINDS)}")


def class_rates(rule: Rule, labels: np.ndarray,
                num_classes: int = 2) -> list[float]:
    """Per-class error rates of a class_conditional rule: `rates`, or (none
    given) all errors on class 0 at the rate giving `error_rate` overall."""
    labels, k = np.asarray(labels), num_classes
    if rule.rates:
        if len(rule.rates) != k:
            raise ValueError(f"config.synthetic.rates has {len(rule.rates)} "
                             f"rates but the task has {k} classes; give one "
                             f"rate per class, e.g. '0.3,0.1'")
        return list(rule.rates)
    n0 = int(np.sum(labels == 0))
    return [min(1.0, rule.error_rate * len(labels) / max(n0, 1))] + [0.0] * (k - 1)


def soft_labels(chosen: np.ndarray, num_classes: int,
                confidence: float) -> np.ndarray:
    """`confidence` on each example's chosen class, the rest shared."""
    if not 1.0 / num_classes < confidence <= 1.0:
        raise ValueError(f"confidence {confidence} must be in (1/{num_classes}"
                         f", 1] so that the chosen class stays the argmax")
    probs = np.full((len(chosen), num_classes),
                    (1.0 - confidence) / (num_classes - 1), np.float32)
    probs[np.arange(len(chosen)), chosen] = confidence
    return probs


def supervise(rule: Rule, labels: np.ndarray, texts, num_classes: int,
              rng: np.random.Generator, *, threshold: float | None = None):
    """The synthetic supervisor's labels of one set.

    Returns (probs [N, K] float32, wrong [N] bool, feature [N] bool or
    None). `threshold`: the length rule's cut (default: this set's own
    quantile)."""
    labels = np.asarray(labels)
    feature = feature_mask(rule, texts, threshold)
    wrong = error_mask(rule, labels, feature, rng, num_classes)
    # Another class, uniformly among the K - 1 others.
    shift = rng.integers(1, num_classes, size=len(labels))
    chosen = np.where(wrong, (labels + shift) % num_classes, labels)
    return soft_labels(chosen, num_classes, rule.confidence), wrong, feature


def realised(labels: np.ndarray, wrong: np.ndarray, feature,
             num_classes: int) -> dict:
    """The realised error structure: overall, per gold class, and on/off
    the rule's feature (JSON-ready; rates over empty subsets are None)."""
    labels, wrong = np.asarray(labels), np.asarray(wrong, bool)

    def rate(mask):
        return float(wrong[mask].mean()) if mask.any() else None

    out = {"n": int(len(labels)), "n_errors": int(wrong.sum()),
           "error_rate": rate(np.ones(len(labels), bool)),
           "per_class": {str(c): rate(labels == c) for c in range(num_classes)},
           "feature": None}
    if feature is not None:
        feature = np.asarray(feature, bool)
        out["feature"] = {
            "n_on": int(feature.sum()), "on": rate(feature), "off": rate(~feature),
            "share_of_errors_on": (float(feature[wrong].mean())
                                   if wrong.any() else None)}
    return out
