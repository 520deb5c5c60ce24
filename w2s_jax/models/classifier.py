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
from w2s_jax.models import layers

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


def pool_segments(hidden: jax.Array, segments: jax.Array,
                  example_segments: jax.Array, pooling: str) -> jax.Array:
    """POOLINGS[pooling] of each example of packed rows: [E, D].

    `segments` [B, L] holds each token's segment id (0: padding), each
    example one contiguous run; example j's id is example_segments[j], and
    ids run from 1 to E. Its last, first or mean hidden state is that of
    its own tokens, as pooling it alone in a row of its own would give.
    """
    batch, length, dim = hidden.shape
    flat, seg = hidden.reshape(batch * length, dim), segments.reshape(-1)
    count = example_segments.shape[0] + 1  # segment 0 (padding) included
    if pooling == "mean":
        sums = jax.ops.segment_sum(flat, seg, num_segments=count)
        sizes = jax.ops.segment_sum(jnp.ones_like(seg, hidden.dtype), seg,
                                    num_segments=count)
        return (sums / jnp.maximum(sizes, 1)[:, None])[example_segments]
    reduce = jax.ops.segment_max if pooling == "last" else jax.ops.segment_min
    at = reduce(jnp.arange(batch * length), seg, num_segments=count)
    return flat[at[example_segments]]


def pool_row_segments(hidden: jax.Array, segments: jax.Array,
                      row_segments: jax.Array, pooling: str) -> jax.Array:
    """pool_segments row by row: [B, S, D], the examples of row b being
    its segments row_segments[b] (numbered 1..S within each row; 0:
    an empty slot, whose output is junk). Every example is pooled from its
    own row, so rows split over devices pool where they are: prediction
    (loop.predict, packed) moves no hidden state between devices."""
    return jax.vmap(lambda h, s, e: pool_segments(h[None], s[None], e, pooling)
                    )(hidden, segments, row_segments)


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
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 example_segments: jax.Array | None = None) -> jax.Array:
        """With `example_segments` [E] the rows are packed (packing.pack):
        attention_mask holds segment ids, and the logits are [E, K], one
        row per example. With [B, S] example slots per row instead (each
        row's segments numbered from 1), they are [B, S, K]
        (pool_row_segments)."""
        if example_segments is None:
            hidden = self.backbone(input_ids, attention_mask).astype(jnp.float32)
            pooled = POOLINGS[self.pooling](hidden, attention_mask)
        else:
            hidden = self.backbone(input_ids, attention_mask,
                                   layers.segment_positions(attention_mask))
            pool = pool_segments if example_segments.ndim == 1 else pool_row_segments
            pooled = pool(hidden.astype(jnp.float32), attention_mask,
                          example_segments, self.pooling)
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


def token_nll(logits: jax.Array, input_ids: jax.Array,
              attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed NLL [B], predicted tokens [B]) of each row's next tokens.

    Position t predicts token t+1 when both are real tokens (right padding:
    the mask is a prefix of ones)."""
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nxt = input_ids[:, 1:]
    picked = jnp.take_along_axis(log_probs, nxt[..., None], axis=-1)[..., 0]
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).astype(jnp.float32)
    return -(picked * valid).sum(-1), valid.sum(-1)


class ChoiceScorer(Classifier):
    """Scores each of an example's candidate sequences: logits [rows, K].

    Input ids and mask are [rows, K, L], candidate k of each example at
    [:, k], each a whole sequence right-padded on its own; the softmax over
    the K scores is the model's distribution over the candidates, so every
    classification loss, metric and weak label applies unchanged.

    A candidate's score is a scalar head on its pooled hidden state
    (num_classes 1, bias-free: a bias would cancel in the softmax), or,
    with `embedding_path` set (a tied decoder: the path of its token
    embedding table in the backbone's params), its log-probability under
    the decoder's LM head. The candidates share their prompt, whose
    log-probability is then the same for all K and cancels in the softmax,
    so that is the probability of each candidate's continuation.
    """

    num_classes: int = 1
    candidates: int = 2
    embedding_path: tuple[str, ...] = ()

    @property
    def example_shape(self):  # K candidates per example
        return (self.candidates, 8)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        rows, k, length = input_ids.shape
        # All candidates go through the backbone as ordinary sequences:
        # [rows, K, L] -> [rows * K, L], an example's candidates adjacent.
        flat_ids = input_ids.reshape(rows * k, length)
        flat_mask = attention_mask.reshape(rows * k, length)
        if not self.embedding_path:
            return super().__call__(flat_ids, flat_mask).reshape(rows, k)
        hidden = self.backbone(flat_ids, flat_mask).astype(jnp.float32)
        table = self.backbone.variables["params"]
        for key in self.embedding_path:
            table = table[key]
        # Boxed with its logical axes while init traces the module.
        logits = hidden @ nn.unbox(table).T.astype(jnp.float32)
        nll, _ = token_nll(logits, flat_ids, flat_mask)
        return -nll.reshape(rows, k)


class PairScorer(ChoiceScorer):
    """A reward model over preference pairs: logits [rows, 2] (float32).

    Completion A of each pair at [:, 0] and completion B at [:, 1], each
    scored by the scalar head (ChoiceScorer), and the logits are
    [r(B), r(A)]: class 1 is "A is preferred", the anthropic_hh label, so
    the softmax gives P(A preferred) = sigmoid(r(A) - r(B)), the
    Bradley-Terry model.
    """

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return super().__call__(input_ids, attention_mask)[:, ::-1]


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
