"""Sequence classifier: a backbone, pooling, and a bias-free linear head.

This is the paper's setup: the classification logits are a bias-free linear
map of the hidden state at the last real token of each (right-padded) input.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.core import sharding

HEAD_INITS = {
    "zeros": nn.initializers.zeros,
    "normal": nn.initializers.normal(stddev=0.02),
}


def pool_last_token(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Hidden state [B, D] at the last position whose attention_mask is 1.

    The position comes from the mask, not from counting non-zero token ids:
    id 0 is a real GPT-2 token ("!"), and counting it as padding (as the
    paper's public code does) pools the wrong position. Taking the largest
    masked-in index also copes with non-contiguous masks. A row with no real
    token pools position 0.
    """
    positions = jnp.arange(hidden.shape[1])[None, :]
    last = jnp.max(jnp.where(attention_mask > 0, positions, 0), axis=1)
    return hidden[jnp.arange(hidden.shape[0]), last]


def pool_mean(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of the hidden states over real tokens (sentence encoders)."""
    mask = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1)


def pool_first_token(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """The first position ([CLS] / <s> for BERT-style encoders)."""
    del attention_mask
    return hidden[:, 0]


POOLINGS = {"last": pool_last_token, "mean": pool_mean, "first": pool_first_token}


class Classifier(nn.Module):
    """logits [B, num_classes] (float32) = head(pool_last_token(backbone(...))).

    With `linear_probe`, gradients stop at the pooled features, so only the
    head trains. Pooling and the head are always computed in float32,
    whatever the backbone's compute dtype, so a mean over many bf16 states,
    the logits and the losses keep full precision.
    """

    backbone: nn.Module
    num_classes: int = 2
    linear_probe: bool = False
    head_init: str = "zeros"
    pooling: str = "last"  # decoders: last real token; encoders: mean or first

    # The input shape of one example (token positions), for tracing an init.
    example_shape = (8,)

    def __post_init__(self):
        # Fail at construction, not at the first init/apply deep inside jit.
        if self.head_init not in HEAD_INITS:
            raise ValueError(
                f"Unknown head_init {self.head_init!r}; choices: {sorted(HEAD_INITS)}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"Unknown pooling {self.pooling!r}; choices: {sorted(POOLINGS)}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        hidden = self.backbone(input_ids, attention_mask).astype(jnp.float32)
        pooled = POOLINGS[self.pooling](hidden, attention_mask)
        if self.linear_probe:
            pooled = jax.lax.stop_gradient(pooled)
        head = nn.Dense(
            self.num_classes,
            use_bias=False,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            kernel_init=sharding.logical_init(HEAD_INITS[self.head_init], ("embed", "classes")),
            name="head",
        )
        return head(pooled)


class PairScorer(Classifier):
    """A reward model over preference pairs: logits [rows, 2] (float32).

    Input ids and mask are [rows, 2, L], completion A of each pair at [:, 0]
    and completion B at [:, 1], each a whole transcript right-padded on its
    own. Every completion is scored alone by the Classifier with a scalar
    head (num_classes 1: r = head(pool(backbone(...))), bias-free, as a
    bias would cancel in the difference), and the logits are [r(B), r(A)]:
    class 1 is "A is preferred", the anthropic_hh label, so the softmax
    gives P(A preferred) = sigmoid(r(A) - r(B)), the Bradley-Terry model,
    and every classification loss, metric and weak label applies unchanged.
    """

    num_classes: int = 1
    example_shape = (2, 8)  # two completions per example

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        rows, pair, length = input_ids.shape
        # Both completions of a row go through the backbone as two ordinary
        # sequences: [rows, 2, L] -> [2 * rows, L], A and B of a row adjacent.
        rewards = super().__call__(input_ids.reshape(rows * pair, length),
                                   attention_mask.reshape(rows * pair, length))
        rewards = rewards.reshape(rows, pair)  # [r(A), r(B)]
        return rewards[:, ::-1]  # [r(B), r(A)]: class 1 = A preferred


def head_from_unembedding(wte: jax.Array | np.ndarray, token_ids: Sequence[int]):
    """Head kernel [D, K] whose column k is the unembedding row of token_ids[k].

    The paper's optional head init: start the classifier as the language
    model's own logit for each label token (e.g. "0" and "1"). `wte` may be
    a numpy array or a (sharded) jax array, which stays on the devices.
    """
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError("token_ids is empty")
    bad = [t for t in ids if not 0 <= t < wte.shape[0]]
    if bad:
        raise ValueError(f"token ids {bad} out of range for a vocabulary of {wte.shape[0]}")
    return wte[np.asarray(ids)].T.astype(np.float32)
