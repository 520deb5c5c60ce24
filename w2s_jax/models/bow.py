"""A bag-of-words TF-IDF featurizer: the cheapest, most human-like supervisor.

Paired with a linear head (the frozen-feature learner) it is a classical
weak model that trains on gold labels and emits weak labels like any other,
the weakest rung of an offline ladder. Pure numpy, deterministic.
"""
from __future__ import annotations

import collections
import re

import numpy as np

_TOKEN = re.compile(r"[a-z0-9']+")


def _terms(text: str) -> list[str]:
    words = _TOKEN.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class TfidfFeaturizer:
    """Unigrams and bigrams; vocabulary = the `vocab_size` terms found in the
    most fitting documents (ties broken alphabetically), smoothed idf,
    sublinear term frequency, rows L2-normalised."""

    def __init__(self, vocab_size: int = 5000, min_df: int = 2):
        self.vocab_size, self.min_df = vocab_size, min_df
        self.vocab: dict[str, int] = {}
        self.idf = np.zeros(0, np.float32)

    def fit(self, texts: list[str]) -> "TfidfFeaturizer":
        df = collections.Counter()
        for text in texts:
            df.update(set(_terms(text)))
        ranked = sorted((t for t, c in df.items() if c >= self.min_df),
                        key=lambda t: (-df[t], t))[:self.vocab_size]
        if not ranked:
            raise ValueError(f"no term occurs in {self.min_df}+ of the "
                             f"{len(texts)} fitting texts")
        self.vocab = {t: i for i, t in enumerate(ranked)}
        counts = np.array([df[t] for t in ranked], np.float64)
        self.idf = (np.log((1 + len(texts)) / (1 + counts)) + 1).astype(np.float32)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocab)), np.float32)
        for row, text in enumerate(texts):
            for term, count in collections.Counter(_terms(text)).items():
                col = self.vocab.get(term)
                if col is not None:
                    out[row, col] = 1.0 + np.log(count)
        out *= self.idf
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
