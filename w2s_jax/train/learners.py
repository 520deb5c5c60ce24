"""What a stage trains: a whole model on tokens (or a scorer of each
example's candidates: the two completions of a preference pair, a chess
puzzle's moves), or a head on frozen features.

All present the same small interface to `experiment.finetune_stage`
(inputs for any subset of the train pool or test set, a fresh model, and
the training settings), so every stage, loss and chain works with either.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.core import stages
from w2s_jax.core.errors import DataError
from w2s_jax.data import batching
from w2s_jax.train import loop, steps
from w2s_jax.models import lora as lora_lib
from w2s_jax.models import vocabulary
from w2s_jax.train.features import LinearHead


@dataclasses.dataclass
class TokenLearner:
    """Finetunes a transformer classifier (or only its head: linear_probe)."""
    role: str
    model: Any  # registry.ResolvedModel
    model_config: Any
    pooling: str
    settings: steps.TrainSettings
    ids: dict[str, list[np.ndarray]]  # side ("train" pool / "test") -> ids
    compute_dtype: str = "float32"  # config.compute_dtype
    remat: str = "none"  # config.remat
    # Weights to start from instead of the checkpoint's: (the key of the
    # stage that made them, numpy backbone tree), e.g. a generative finetune.
    start: tuple[str, Any] | None = None
    # LoRA adapters (models/lora.py): only they and the head train.
    lora: lora_lib.LoraSpec | None = None
    # Train a table of only the embedding rows the examples use, the ids
    # renumbered (models/vocabulary.py): the same predictions, less work.
    compact_vocab: bool = False

    def __post_init__(self):
        self.vocab = None
        if self.compact_vocab and self.reads_rows_only:
            cfg, pad_id = self.model.backbone_config, self.model.tokenizer.pad_id
            self.vocab = vocabulary.used_by(
                vocabulary.flat_sequences(self.ids), full_size=cfg.vocab_size,
                pad_id=pad_id,
                # A config that names its pad id reads it in the forward
                # (MPNet's positions): the pad keeps its number.
                keep_below=pad_id + 1 if hasattr(cfg, "pad_token_id") else 0)
        # The model as this learner trains it: with a compact vocabulary, a
        # table of its rows and a tokenizer of its numbers.
        self.net = self.model
        if self.vocab is not None:
            self.ids = {side: [self._renumbered(x) for x in examples]
                        for side, examples in self.ids.items()}
            self.net = dataclasses.replace(
                self.model, backbone_config=dataclasses.replace(
                    self.model.backbone_config, vocab_size=self.vocab.size),
                tokenizer=vocabulary.RenumberedTokenizer(self.model.tokenizer,
                                                         self.vocab))

    def _renumbered(self, example):
        if isinstance(example, tuple):  # a ChoiceLearner's candidates
            return tuple(self.vocab.renumber(x) for x in example)
        return self.vocab.renumber(example)

    @property
    def reads_rows_only(self) -> bool:
        """Whether the model reads its token table only at its inputs' ids
        (not as an LM head), so a compact vocabulary changes nothing."""
        return True

    @property
    def spec(self) -> dict:
        cfg = self.model_config
        spec = {"mode": "finetune", "name": self.model.name,
                "source": self.model.source,
                "backbone": dataclasses.asdict(self.model.backbone_config),
                "linear_probe": cfg.linear_probe, "head_init": cfg.head_init,
                "pooling": self.pooling, "compute_dtype": self.compute_dtype}
        if self.start is not None:  # only then, so other keys stay as they were
            spec["start"] = self.start[0]
        if self.lora is not None:
            spec["lora"] = dataclasses.asdict(self.lora)
        if self.vocab is not None:
            # The ids below are renumbered by it (and a checkpoint's table
            # holds its rows).
            spec["vocabulary"] = stages.fingerprint(self.vocab.ids)
        return spec

    @property
    def trainable(self):
        """Which parameters train (loop.finetune): under LoRA the adapters
        and the head; otherwise all (None)."""
        return None if self.lora is None else lora_lib.is_trainable

    def fingerprint(self, side: str, indices: np.ndarray) -> str:
        return stages.fingerprint(*[self.ids[side][i] for i in indices])

    def lengths(self, side: str, indices: np.ndarray) -> np.ndarray:
        return np.array([len(self.ids[side][i]) for i in indices])

    def inputs(self, side: str, indices: np.ndarray) -> Callable:
        return loop.token_inputs([self.ids[side][i] for i in indices],
                                  pad_id=self.net.tokenizer.pad_id,
                                  max_ctx=self.settings.max_ctx, packable=True)

    def build(self, num_classes: int):
        return self._build(self.net, num_classes)

    def _build(self, model, num_classes: int):
        cfg = self.model_config
        return steps.build_classifier(
            model, num_classes=num_classes, linear_probe=cfg.linear_probe,
            head_init=cfg.head_init, pooling=self.pooling,
            compute_dtype=self.compute_dtype, remat=self.remat)

    def init(self, num_classes: int, seed: int, mesh):
        """(forward, params): the module's forward and its initial params
        (pretrained, or a start's; under LoRA with fresh adapters and, with
        base_dtype bfloat16, the frozen weights in bfloat16; with a compact
        vocabulary, its rows of the whole table, initialised whole so a
        random init is the same)."""
        params = steps.init_params(
            self._build(self.model, num_classes), self.model,
            head_init=self.model_config.head_init, seed=seed, mesh=mesh,
            backbone_params=self.start[1] if self.start else None,
            lora_spec=self.lora)
        if self.vocab is not None:
            params = steps.compact_embedding(params, self.model, self.vocab)
        if self.lora is not None and self.lora.base_dtype == "bfloat16":
            params = steps.cast_frozen(params, self.trainable, jnp.bfloat16)
        return steps.module_forward(self.build(num_classes), self.lora), params


@dataclasses.dataclass
class ChoiceLearner(TokenLearner):
    """Finetunes a scorer of each example's K candidates (mode "choice",
    e.g. the candidate moves of a chess puzzle).

    `ids[side][i]` holds example i's K candidate sequences, tokenized
    separately (`tokenize`); a models.classifier.ChoiceScorer scores each
    one, and its logits [rows, K] make the stage an ordinary K-way
    classifier, so losses, weak labels and metrics apply unchanged. Batches
    keep one row per example ([rows, K, L]), so the loops' sharding and
    per-process row selection are as for tokens.
    """
    ids: dict[str, list[tuple[np.ndarray, ...]]]
    mode = "choice"

    @classmethod
    def tokenize(cls, tokenizer, candidates: list[list[str]], *, max_ctx: int,
                 overlength: str) -> list[tuple[np.ndarray, ...]]:
        """The ids of each example's candidate texts.

        With overlength 'truncate', mode "choice" cuts the same number of
        leading tokens from all of an example's candidates, so they keep
        the same (shared) prompt tokens, whose log-probability then cancels
        in the softmax over them; a reward model's completions each keep
        their LAST max_ctx tokens (the reply).

        Under 'drop' the examples were already kept by their whole text,
        which holds every candidate, so each candidate fits; one that does
        not would have to be dropped here, out of step with every other
        stage's examples, so it is an error instead.
        """
        k = len(candidates[0])
        common_cut = cls.mode == "choice" and overlength == "truncate"
        tokens = batching.tokenize(
            tokenizer, [t for group in candidates for t in group],
            max_ctx=max_ctx, overlength="drop" if common_cut else overlength)
        if overlength == "drop" and tokens.too_long.any():
            raise DataError(
                f"{int(tokens.too_long.sum())} candidates are longer than "
                f"max_ctx={max_ctx} although their example's text fits; set "
                f"config.overlength=truncate")
        groups = [tokens.ids[i:i + k] for i in range(0, len(tokens.ids), k)]
        if common_cut:
            groups = [[x[max(0, max(map(len, group)) - max_ctx):] for x in group]
                      for group in groups]
        return [tuple(group) for group in groups]

    @property
    def candidates(self) -> int:
        return len(next(iter(self.ids.values()))[0])

    @property
    def spec(self) -> dict:
        return {**super().spec, "mode": self.mode}

    def fingerprint(self, side: str, indices: np.ndarray) -> str:
        return stages.fingerprint(*[x for i in indices for x in self.ids[side][i]])

    def lengths(self, side: str, indices: np.ndarray) -> np.ndarray:
        # A row is as long as its longest candidate: batches are grouped by
        # it, and loop._process_inputs builds the longest row first.
        return np.array([max(len(x) for x in self.ids[side][i])
                         for i in indices])

    def inputs(self, side: str, indices: np.ndarray) -> Callable:
        # Candidates flat: example j's k-th at K * j + k, so one batching.pad
        # gives all a common length (and filler rows a real position), and
        # a reshape gives the rows back.
        k = self.candidates
        flat = [x for i in indices for x in self.ids[side][i]]
        pad_id, max_ctx = self.net.tokenizer.pad_id, self.settings.max_ctx

        def make_inputs(local, rows, rungs=None):
            local = np.asarray(local)
            ids, mask = batching.pad(
                flat, (k * local[:, None] + np.arange(k)).ravel(),
                rows=k * rows, max_ctx=max_ctx, pad_id=pad_id, rungs=rungs)
            return ids.reshape(rows, k, -1), mask.reshape(rows, k, -1)
        return make_inputs

    @property
    def reads_rows_only(self) -> bool:
        # Scored by a tied decoder's LM head, whose softmax spans every row.
        return self.mode == "reward" or not steps.choice_by_lm(self.model)

    def _build(self, model, num_classes: int):
        if num_classes != self.candidates:
            raise ValueError(f"the examples have {self.candidates} candidates "
                             f"but the targets {num_classes} classes")
        cfg = self.model_config
        return steps.build_choice_scorer(
            model, candidates=self.candidates,
            linear_probe=cfg.linear_probe, head_init=cfg.head_init,
            pooling=self.pooling, compute_dtype=self.compute_dtype,
            remat=self.remat, pairs=self.mode == "reward")


@dataclasses.dataclass
class PairLearner(ChoiceLearner):
    """A reward model on the two completions (A, B) of preference pairs
    (mode "reward"): a models.classifier.PairScorer, whose logits
    [r(B), r(A)] make class 1 "A is preferred"."""
    mode = "reward"


@dataclasses.dataclass
class FeatureLearner:
    """Trains a linear head on precomputed (standardised) features."""
    role: str
    feature_spec: dict  # what produced the features (model, pooling, layer)
    settings: steps.TrainSettings
    features: dict[str, np.ndarray]  # side -> [N, D]

    @property
    def spec(self) -> dict:
        return {"mode": "features", **self.feature_spec}

    def fingerprint(self, side: str, indices: np.ndarray) -> str:
        return stages.fingerprint(self.features[side][indices])

    def lengths(self, side: str, indices: np.ndarray) -> np.ndarray:
        return np.zeros(len(indices), np.int64)  # no tokens: nothing to pad

    def inputs(self, side: str, indices: np.ndarray) -> Callable:
        feats = self.features[side][indices]

        def make_inputs(local, rows, rungs=None):  # features have no length
            out = np.zeros((rows, feats.shape[1]), np.float32)
            out[:len(local)] = feats[local]
            return out
        return make_inputs

    def init(self, num_classes: int, seed: int, mesh):
        head = LinearHead(num_classes)
        dim = next(iter(self.features.values())).shape[1]
        params = steps.init_sharded(
            lambda key: head.init(key, jnp.zeros((1, dim), jnp.float32))["params"],
            jax.random.key(seed), mesh)
        return (lambda p, x: head.apply({"params": p}, x)), params
