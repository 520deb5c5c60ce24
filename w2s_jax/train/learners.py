"""What a stage trains: a whole model on tokens, or a head on frozen features.

Both present the same small interface to `experiment.finetune_stage`
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
from w2s_jax.train import loop, steps
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

    @property
    def spec(self) -> dict:
        cfg = self.model_config
        return {"mode": "finetune", "name": self.model.name,
                "source": self.model.source,
                "backbone": dataclasses.asdict(self.model.backbone_config),
                "linear_probe": cfg.linear_probe, "head_init": cfg.head_init,
                "pooling": self.pooling, "compute_dtype": self.compute_dtype}

    def fingerprint(self, side: str, indices: np.ndarray) -> str:
        return stages.fingerprint(*[self.ids[side][i] for i in indices])

    def lengths(self, side: str, indices: np.ndarray) -> np.ndarray:
        return np.array([len(self.ids[side][i]) for i in indices])

    def inputs(self, side: str, indices: np.ndarray) -> Callable:
        return loop.token_inputs([self.ids[side][i] for i in indices],
                                  pad_id=self.model.tokenizer.pad_id,
                                  max_ctx=self.settings.max_ctx)

    def init(self, num_classes: int, seed: int, mesh):
        cfg = self.model_config
        module = steps.build_classifier(
            self.model, num_classes=num_classes, linear_probe=cfg.linear_probe,
            head_init=cfg.head_init, pooling=self.pooling,
            compute_dtype=self.compute_dtype, remat=self.remat)
        params = steps.init_params(module, self.model, head_init=cfg.head_init,
                                   seed=seed, mesh=mesh)
        return steps.module_forward(module), params


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
        return np.ones(len(indices), np.int64)

    def inputs(self, side: str, indices: np.ndarray) -> Callable:
        feats = self.features[side][indices]

        def make_inputs(local, rows):
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
