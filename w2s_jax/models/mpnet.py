"""MPNet encoder in Flax linen, numerically matching Hugging Face `MPNetModel`.

Covers sentence-transformers/all-mpnet-base-v2. Its layers are BERT's
post-LayerNorm blocks (`layers.EncoderLayer`); what differs is the input side:
no token-type embedding, position ids counted from the pad id, and a T5-style
bucketed relative position bias, computed once and added to the attention
scores of every layer.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.core import sharding
from w2s_jax.models.layers import (
    ENCODER_MLP_MAP, EncoderLayer, attention_allowed, check_encoder_fields, check_model_type,
    embed, layer_norm, linear_rows, norm_rows,
)

SUPPORTED_MODEL_TYPES = ("mpnet",)
# HF's MPNetEncoder calls its bucketing with the default 32 buckets and max
# distance 128 whatever the config says, and derives positions from pad id 1
# (hard-coded). A config asking for anything else would load fine and then
# disagree with HF, so it is refused.
NUM_BUCKETS = 32
MAX_DISTANCE = 128
PAD_TOKEN_ID = 1


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    relative_attention_num_buckets: int = NUM_BUCKETS
    pad_token_id: int = PAD_TOKEN_ID

    def __post_init__(self):
        check_encoder_fields(self.hidden_act, self.hidden_size, self.num_attention_heads)
        if self.relative_attention_num_buckets != NUM_BUCKETS:
            raise ValueError(
                f"Unsupported relative_attention_num_buckets "
                f"{self.relative_attention_num_buckets}; supported: [{NUM_BUCKETS}]"
            )
        if self.pad_token_id != PAD_TOKEN_ID:
            raise ValueError(
                f"Unsupported pad_token_id {self.pad_token_id}; supported: [{PAD_TOKEN_ID}] "
                "(HF MPNet always counts positions from pad id 1)"
            )

    @classmethod
    def from_hf(cls, hf_config: dict) -> "MPNetConfig":
        """Builds the config from a Hugging Face `config.json` dict."""
        check_model_type(hf_config, SUPPORTED_MODEL_TYPES)
        return cls(
            vocab_size=hf_config["vocab_size"],
            hidden_size=hf_config["hidden_size"],
            num_hidden_layers=hf_config["num_hidden_layers"],
            num_attention_heads=hf_config["num_attention_heads"],
            intermediate_size=hf_config["intermediate_size"],
            max_position_embeddings=hf_config["max_position_embeddings"],
            layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
            hidden_act=hf_config.get("hidden_act", "gelu"),
            relative_attention_num_buckets=hf_config.get(
                "relative_attention_num_buckets", NUM_BUCKETS),
            pad_token_id=hf_config.get("pad_token_id", PAD_TOKEN_ID),
        )


def relative_position_buckets(length: int) -> np.ndarray:
    """Bucket index [L, L] (query, key) of each key's offset from its query.

    Half the buckets are for keys after the query, half for keys before;
    within each half, distances below 8 get their own bucket and larger ones
    share log-spaced buckets up to 128. Computed with numpy at trace time (the
    length is static) using HF's float32 formula, so boundary distances
    (16, 32, 64) truncate to exactly the same bucket as in PyTorch.
    """
    positions = np.arange(length)
    distance = positions[:, None] - positions[None, :]  # query - key
    half = NUM_BUCKETS // 2
    buckets = np.where(distance < 0, half, 0)
    distance = np.abs(distance)
    max_exact = half // 2
    # max(.., 1) only keeps log() finite where the exact branch is taken anyway.
    scaled = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(MAX_DISTANCE / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class MPNetBackbone(nn.Module):
    """Token ids -> last hidden states [B, L, hidden_size].

    Inputs must be RIGHT-padded (pad with id 1 like the tokenizer does; with
    right padding the pad id used does not change real positions' outputs).
    As in HF, positions come from the ids, not the mask: a real token equal
    to the pad id gets the pad position and is skipped when counting later
    tokens' positions. `remat` names a sharding.REMAT_POLICIES entry, applied
    to every layer. With `positions` (each token's index in its segment) the
    rows are packed (layers.attention_allowed): attention_mask holds segment
    ids, and the counting starts again at each segment.
    """

    config: MPNetConfig
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 positions: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[1]
        # fairseq-style positions: real tokens count from pad+1, pads get pad.
        not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
        counted = jnp.cumsum(not_pad, axis=1)
        packed = positions is not None
        if packed:  # minus what the row counted before the segment
            before = jnp.arange(length)[None, :] - positions - 1
            counted = counted - jnp.where(
                before >= 0,
                jnp.take_along_axis(counted, jnp.maximum(before, 0), axis=1), 0)
        positions = counted * not_pad + cfg.pad_token_id
        x = embed(cfg.vocab_size, cfg.hidden_size, self.dtype, "word_embeddings",
                  ("vocab", "embed"))(input_ids)
        x = x + embed(cfg.max_position_embeddings, cfg.hidden_size, self.dtype,
                      "position_embeddings", ("positions", "embed"))(positions)
        x = layer_norm(cfg.layer_norm_eps, self.dtype, "embeddings_norm")(x)
        # One [1, H, L, L] float32 bias from arange offsets, shared by all layers.
        bias = embed(NUM_BUCKETS, cfg.num_attention_heads, jnp.float32,
                     "relative_attention_bias", ("positions", "heads"))(
            jnp.asarray(relative_position_buckets(length)))
        bias = bias.transpose(2, 0, 1)[None]
        # Within a segment, index offsets are position offsets: the arange
        # bias above holds for packed rows too.
        allowed = attention_allowed(attention_mask, packed=packed)
        layer = sharding.remat_block(EncoderLayer, self.remat)
        for i in range(cfg.num_hidden_layers):
            x = layer(cfg, self.dtype, name=f"layer_{i}")(x, allowed, bias)
        return x


# Flax parameter path <- Hugging Face tensor name, `{i}` = layer index.
HF_WEIGHT_MAP: tuple[tuple, ...] = (
    ("word_embeddings/embedding", "embeddings.word_embeddings.weight"),
    ("position_embeddings/embedding", "embeddings.position_embeddings.weight"),
    *norm_rows("embeddings_norm", "embeddings.LayerNorm"),
    ("relative_attention_bias/embedding", "encoder.relative_attention_bias.weight"),
    *linear_rows("layer_{i}/attention/query", "encoder.layer.{i}.attention.attn.q"),
    *linear_rows("layer_{i}/attention/key", "encoder.layer.{i}.attention.attn.k"),
    *linear_rows("layer_{i}/attention/value", "encoder.layer.{i}.attention.attn.v"),
    *linear_rows("layer_{i}/attention/out", "encoder.layer.{i}.attention.attn.o"),
    *norm_rows("layer_{i}/attention_norm", "encoder.layer.{i}.attention.LayerNorm"),
    *ENCODER_MLP_MAP,
)

# MPNetForMaskedLM / MPNetForSequenceClassification etc. nest the encoder
# under `mpnet.`; MPNetModel and sentence-transformers checkpoints do not.
HF_PREFIXES: tuple[str, ...] = ("mpnet.",)

# Pooler and task heads (replaced by our classifier), and the position_ids
# buffer that older checkpoints still carry.
HF_UNNEEDED: tuple[str, ...] = (
    r"^pooler\.",
    r"^embeddings\.position_ids$",
    r"^(lm_head|classifier|qa_outputs)\.",
)

embedding_path: tuple[str, ...] = ("word_embeddings", "embedding")


def num_layers(config: MPNetConfig) -> int:
    return config.num_hidden_layers
