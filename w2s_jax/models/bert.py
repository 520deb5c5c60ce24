"""BERT encoder in Flax linen, numerically matching Hugging Face `BertModel`.

Covers sentence-transformers MiniLM checkpoints (model_type "bert"). The
backbone returns the encoder's last hidden states; the classifier pools them
(mean or first token), so BERT's own pooler is never built. No dropout, like
the GPT-2 backbone, and parameters are always float32 (`dtype` is only the
compute dtype). Every parameter dimension and the main activations carry
logical axis names, which `sharding.RULES` maps to the device mesh.

`BertAttention` and `BertLayer` are shared with MPNet, whose layers are the
same post-LayerNorm blocks plus an additive relative position bias.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax.core import sharding
from w2s_jax.models.gpt2 import ACTIVATIONS

SUPPORTED_MODEL_TYPES = ("bert",)
# HF 5 only implements absolute positions; older configs still name the type.
POSITION_EMBEDDING_TYPES = ("absolute",)

# BERT's initialiser; only used for random init, real runs load weights.
_INIT = nn.initializers.normal(stddev=0.02)


def check_encoder_fields(hidden_act: str, hidden_size: int, num_attention_heads: int) -> None:
    """Validation shared by the BERT and MPNet configs."""
    if hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"Unsupported hidden_act {hidden_act!r}; supported: {sorted(ACTIVATIONS)}"
        )
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size={hidden_size} is not divisible by "
            f"num_attention_heads={num_attention_heads}"
        )


def check_model_type(hf_config: dict, supported: tuple[str, ...]) -> None:
    model_type = hf_config.get("model_type")
    if model_type not in supported:
        raise ValueError(f"Unsupported model_type {model_type!r}; supported: {list(supported)}")


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


def dense(features: int, dtype: Any, name: str, axes: tuple[str, str]) -> nn.Dense:
    """`axes`: logical names of the kernel's (input, output) dimensions."""
    return nn.Dense(
        features, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=sharding.logical_init(_INIT, axes),
        bias_init=sharding.logical_init(nn.initializers.zeros_init(), axes[1:]), name=name,
    )


def embed(
    num_embeddings: int, features: int, dtype: Any, name: str, axes: tuple[str, str]
) -> nn.Embed:
    """`axes`: logical names of the table's (row, feature) dimensions."""
    return nn.Embed(
        num_embeddings, features, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=sharding.logical_init(_INIT, axes), name=name,
    )


def layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
        scale_init=sharding.logical_init(nn.initializers.ones_init(), ("norm",)),
        bias_init=sharding.logical_init(nn.initializers.zeros_init(), ("norm",)), name=name,
    )


class BertAttention(nn.Module):
    """Bidirectional multi-head attention with separate q/k/v/out projections.

    `config` needs hidden_size and num_attention_heads (BertConfig or MPNetConfig).
    """

    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array, bias: jax.Array | None) -> jax.Array:
        """`allowed`: boolean [B, 1, 1, L] key mask; `bias`: float32 [1, H, L, L] or None."""
        cfg = self.config
        batch, length, _ = x.shape
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        q, k, v = (
            dense(cfg.hidden_size, self.dtype, name, ("embed", "heads"))(x)
            .reshape(batch, length, heads, head_dim)
            for name in ("query", "key", "value")
        )
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (head_dim**-0.5)
        if bias is not None:
            scores = scores + bias
        # Softmax in float32; `where` (not an additive -inf) keeps an all-padding
        # row finite. Padding queries get junk outputs that pooling ignores.
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, cfg.hidden_size)
        out = sharding.constrain(out, ("batch", "length", "act_heads"))
        return dense(cfg.hidden_size, self.dtype, "out", ("heads", "embed"))(out)


class BertLayer(nn.Module):
    """Post-LayerNorm block: x = ln(x + attn(x)); x = ln(x + mlp(x)).

    `config` also needs intermediate_size, hidden_act and layer_norm_eps.
    """

    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array, bias: jax.Array | None) -> jax.Array:
        cfg = self.config
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        attn = BertAttention(cfg, self.dtype, name="attention")(x, allowed, bias)
        x = layer_norm(cfg.layer_norm_eps, self.dtype, "attention_norm")(x + attn)
        h = dense(cfg.intermediate_size, self.dtype, "intermediate", ("embed", "mlp"))(x)
        h = sharding.constrain(ACTIVATIONS[cfg.hidden_act](h), ("batch", "length", "act_mlp"))
        h = dense(cfg.hidden_size, self.dtype, "output", ("mlp", "embed"))(h)
        return layer_norm(cfg.layer_norm_eps, self.dtype, "output_norm")(x + h)


def key_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, L] 0/1 mask -> boolean [B, 1, 1, L]: every query sees the real keys."""
    return attention_mask.astype(bool)[:, None, None, :]


class BertBackbone(nn.Module):
    """Token ids -> last hidden states [B, L, hidden_size].

    Inputs must be RIGHT-padded: positions are arange(L), so only then do the
    real tokens sit where they would in an unpadded pass. Token types are all
    0 (single-segment inputs, as sentence encoders are used). `remat` names a
    sharding.REMAT_POLICIES entry, applied to every layer.
    """

    config: BertConfig
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[1]
        x = embed(cfg.vocab_size, cfg.hidden_size, self.dtype, "word_embeddings",
                  ("vocab", "embed"))(input_ids)
        x = x + embed(cfg.max_position_embeddings, cfg.hidden_size, self.dtype,
                      "position_embeddings", ("positions", "embed"))(jnp.arange(length)[None, :])
        x = x + embed(cfg.type_vocab_size, cfg.hidden_size, self.dtype,
                      "token_type_embeddings", ("positions", "embed"))(
            jnp.zeros((1, length), jnp.int32))
        x = layer_norm(cfg.layer_norm_eps, self.dtype, "embeddings_norm")(x)
        allowed = key_mask(attention_mask)
        layer = sharding.remat_block(BertLayer, self.remat)
        for i in range(cfg.num_hidden_layers):
            x = layer(cfg, self.dtype, name=f"layer_{i}")(x, allowed, None)
        return x


def linear_rows(flax: str, hf: str) -> tuple[tuple, ...]:
    """Table rows for one nn.Linear -> nn.Dense. PyTorch stores the weight
    [out, in] and Dense the kernel [in, out], hence the transpose."""
    return ((flax + "/kernel", hf + ".weight", "T"), (flax + "/bias", hf + ".bias"))


def norm_rows(flax: str, hf: str) -> tuple[tuple, ...]:
    return ((flax + "/scale", hf + ".weight"), (flax + "/bias", hf + ".bias"))


# The feed-forward half of a layer is named identically in BERT and MPNet.
LAYER_MLP_MAP: tuple[tuple, ...] = (
    *linear_rows("layer_{i}/intermediate", "encoder.layer.{i}.intermediate.dense"),
    *linear_rows("layer_{i}/output", "encoder.layer.{i}.output.dense"),
    *norm_rows("layer_{i}/output_norm", "encoder.layer.{i}.output.LayerNorm"),
)

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
    *LAYER_MLP_MAP,
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
