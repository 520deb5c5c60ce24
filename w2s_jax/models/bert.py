"""BERT encoder in Flax linen, numerically matching Hugging Face `BertModel`.

Covers sentence-transformers MiniLM checkpoints (model_type "bert"). The
backbone returns the encoder's last hidden states; the classifier pools them
(mean or first token), so BERT's own pooler is never built. No dropout, like
the GPT-2 backbone, and parameters are always float32 (`dtype` is only the
compute dtype). Every parameter dimension and the main activations carry
logical axis names, which `sharding.RULES` maps to the device mesh.

Its layers are `layers.EncoderLayer`, shared with MPNet, whose layers are
the same post-LayerNorm blocks plus an additive relative position bias.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax.core import sharding
from w2s_jax.models.layers import (
    ENCODER_MLP_MAP, EncoderLayer, attention_allowed, check_encoder_fields, check_model_type,
    embed, layer_norm, linear_rows, norm_rows,
)

SUPPORTED_MODEL_TYPES = ("bert",)
# HF 5 only implements absolute positions; older configs still name the type.
POSITION_EMBEDDING_TYPES = ("absolute",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self):
        check_encoder_fields(self.hidden_act, self.hidden_size, self.num_attention_heads)

    @classmethod
    def from_hf(cls, hf_config: dict) -> "BertConfig":
        """Builds the config from a Hugging Face `config.json` dict."""
        check_model_type(hf_config, SUPPORTED_MODEL_TYPES)
        position_type = hf_config.get("position_embedding_type", "absolute")
        if position_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"Unsupported position_embedding_type {position_type!r}; "
                f"supported: {list(POSITION_EMBEDDING_TYPES)}"
            )
        # A decoder BERT would load the same tensors but must attend causally.
        if hf_config.get("is_decoder", False):
            raise ValueError("Unsupported is_decoder=True; only bidirectional encoders")
        return cls(
            vocab_size=hf_config["vocab_size"],
            hidden_size=hf_config["hidden_size"],
            num_hidden_layers=hf_config["num_hidden_layers"],
            num_attention_heads=hf_config["num_attention_heads"],
            intermediate_size=hf_config["intermediate_size"],
            max_position_embeddings=hf_config["max_position_embeddings"],
            type_vocab_size=hf_config.get("type_vocab_size", 2),
            layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
            hidden_act=hf_config.get("hidden_act", "gelu"),
        )


class BertBackbone(nn.Module):
    """Token ids -> last hidden states [B, L, hidden_size].

    Inputs must be RIGHT-padded: positions are arange(L), so only then do the
    real tokens sit where they would in an unpadded pass. Token types are all
    0 (single-segment inputs, as sentence encoders are used). `remat` names a
    sharding.REMAT_POLICIES entry, applied to every layer. With `positions`
    the rows are packed (layers.attention_allowed): attention_mask holds
    segment ids.
    """

    config: BertConfig
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 positions: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[1]
        x = embed(cfg.vocab_size, cfg.hidden_size, self.dtype, "word_embeddings",
                  ("vocab", "embed"))(input_ids)
        x = x + embed(cfg.max_position_embeddings, cfg.hidden_size, self.dtype,
                      "position_embeddings", ("positions", "embed"))(
            jnp.arange(length)[None, :] if positions is None else positions)
        x = x + embed(cfg.type_vocab_size, cfg.hidden_size, self.dtype,
                      "token_type_embeddings", ("positions", "embed"))(
            jnp.zeros((1, length), jnp.int32))
        x = layer_norm(cfg.layer_norm_eps, self.dtype, "embeddings_norm")(x)
        allowed = attention_allowed(attention_mask, packed=positions is not None)
        layer = sharding.remat_block(EncoderLayer, self.remat)
        for i in range(cfg.num_hidden_layers):
            x = layer(cfg, self.dtype, name=f"layer_{i}")(x, allowed, None)
        return x


# Flax parameter path <- Hugging Face tensor name, `{i}` = layer index.
HF_WEIGHT_MAP: tuple[tuple, ...] = (
    ("word_embeddings/embedding", "embeddings.word_embeddings.weight"),
    ("position_embeddings/embedding", "embeddings.position_embeddings.weight"),
    ("token_type_embeddings/embedding", "embeddings.token_type_embeddings.weight"),
    *norm_rows("embeddings_norm", "embeddings.LayerNorm"),
    *linear_rows("layer_{i}/attention/query", "encoder.layer.{i}.attention.self.query"),
    *linear_rows("layer_{i}/attention/key", "encoder.layer.{i}.attention.self.key"),
    *linear_rows("layer_{i}/attention/value", "encoder.layer.{i}.attention.self.value"),
    *linear_rows("layer_{i}/attention/out", "encoder.layer.{i}.attention.output.dense"),
    *norm_rows("layer_{i}/attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    *ENCODER_MLP_MAP,
)

# BertForSequenceClassification / BertForMaskedLM etc. nest the encoder under
# `bert.`; BertModel and sentence-transformers checkpoints have no prefix.
HF_PREFIXES: tuple[str, ...] = ("bert.",)

# Pooler and task heads (replaced by our classifier) and old position/type id
# buffers that some checkpoints still carry.
HF_UNNEEDED: tuple[str, ...] = (
    r"^pooler\.",
    r"^embeddings\.(position_ids|token_type_ids)$",
    r"^(classifier|cls|qa_outputs)\.",
)

embedding_path: tuple[str, ...] = ("word_embeddings", "embedding")


def num_layers(config: BertConfig) -> int:
    return config.num_hidden_layers
