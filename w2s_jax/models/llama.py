"""Llama-style decoder in Flax linen, numerically matching Hugging Face `LlamaModel`.

One module covers the RMSNorm + RoPE + SwiGLU + grouped-query-attention
family: Llama 2/3, SmolLM2 (model_type "llama") and Qwen2/Qwen2.5
(model_type "qwen2", which is Llama with biases on q/k/v but not o_proj).
Like `gpt2.py` it maps token ids to final (post-`norm`) hidden states, with
no dropout and no KV cache.

Parameters are always float32; `dtype` only sets the compute dtype. Every
parameter dimension and the main activations carry logical axis names, which
`sharding.RULES` maps to the device mesh.
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
from w2s_jax.models.layers import attention_allowed, check_model_type, dense, embed

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
# HF's ACT2FN names for SiLU; the gated MLP is only defined for it here.
SUPPORTED_ACTIVATIONS = ("silu", "swish")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
DEFAULT_ROPE_THETA = 10_000.0  # HF's fallback when a config names none
_ROPE_KEYS = {
    "rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
    "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
}

# Where head_from_unembedding finds the token embeddings in the params tree.
embedding_path = ("embed_tokens", "embedding")


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's frequency-dependent RoPE rescaling (HF rope_type "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = DEFAULT_ROPE_THETA
    rope_scaling: Llama3RopeScaling | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"

    def __post_init__(self):
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"Unsupported hidden_act {self.hidden_act!r}; supported: {list(SUPPORTED_ACTIVATIONS)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

    @classmethod
    def from_hf(cls, hf_config: dict) -> "LlamaConfig":
        """Builds the config from a Hugging Face `config.json` dict."""
        check_model_type(hf_config, SUPPORTED_MODEL_TYPES)
        model_type = hf_config["model_type"]
        _reject_unimplemented(hf_config)
        hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
        # Llama's attention_bias puts a bias on all four projections; Qwen2
        # hard-codes biases on q/k/v only (its config has no such field).
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(hf_config.get("attention_bias", False))
        theta, scaling = _rope_from_hf(hf_config)
        return cls(
            vocab_size=hf_config["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf_config["intermediate_size"],
            num_hidden_layers=hf_config["num_hidden_layers"],
            num_attention_heads=heads,
            # `or`: transformers writes explicit nulls for these defaults.
            num_key_value_heads=hf_config.get("num_key_value_heads") or heads,
            head_dim=hf_config.get("head_dim") or hidden // heads,
            max_position_embeddings=hf_config["max_position_embeddings"],
            rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
            hidden_act=hf_config.get("hidden_act", "silu"),
        )


def _reject_unimplemented(hf_config: dict) -> None:
    """Variants that would load without complaint (same parameter shapes, or
    parameters we would just not ask for) and silently compute something else."""
    if hf_config.get("mlp_bias", False):
        raise ValueError("Unsupported mlp_bias=True")
    if hf_config.get("use_sliding_window", False) or "sliding_attention" in (
        hf_config.get("layer_types") or ()
    ):
        raise ValueError("Unsupported sliding-window attention (use_sliding_window / layer_types)")


def _rope_from_hf(hf_config: dict) -> tuple[float, Llama3RopeScaling | None]:
    """(rope_theta, scaling) from either config layout.

    transformers >= 5 writes `rope_parameters: {rope_theta, rope_type, ...}`
    and no top-level `rope_theta`; older configs (most hub checkpoints) have
    a top-level `rope_theta` plus an optional `rope_scaling` dict whose type
    key may be the legacy "type". Values inside the dict win, as in HF.
    """
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    # Unknown keys include per-layer-type nesting ({"full_attention": {...}}),
    # which would otherwise read as an unscaled default.
    unknown = sorted(set(rope) - _ROPE_KEYS)
    if unknown:
        raise ValueError(f"Unsupported RoPE parameters {unknown}")
    theta = rope.get("rope_theta", hf_config.get("rope_theta", DEFAULT_ROPE_THETA))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"Unsupported RoPE scaling type {rope_type!r}; supported: {list(SUPPORTED_ROPE_TYPES)}"
        )
    partial = rope.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"Unsupported partial_rotary_factor={partial}; only 1.0")
    if rope_type == "default":
        return float(theta), None
    return float(theta), Llama3RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        # HF's own fallback when the dict omits it.
        original_max_position_embeddings=int(
            rope.get("original_max_position_embeddings", hf_config["max_position_embeddings"])
        ),
    )


def num_layers(config: LlamaConfig) -> int:
    return config.num_hidden_layers


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse frequencies [head_dim / 2], in float32 like HF computes them."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = np.float32(1.0) / np.power(np.float32(config.rope_theta), exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    # Llama 3.1: wavelengths longer than the original context are stretched
    # by `factor`, shorter than context/high_freq_factor kept, and the band
    # between interpolated smoothly.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _rotate_half(x: jax.Array) -> jax.Array:
    # HF's convention pairs feature j with j + head_dim/2 (not adjacent
    # features as in the original paper); checkpoints' q/k weights assume it.
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-second, first], axis=-1)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, H, D]; cos/sin [L, D], or [B, L, D] (packed rows)."""
    return x * cos[..., None, :] + _rotate_half(x) * sin[..., None, :]


def _rms_norm(config: LlamaConfig, dtype: Any, name: str) -> nn.RMSNorm:
    # Flax computes the mean square in float32 even for bf16 inputs, as HF does.
    return nn.RMSNorm(
        epsilon=config.rms_norm_eps, dtype=dtype, param_dtype=jnp.float32,
        scale_init=sharding.logical_init(nn.initializers.ones_init(), ("norm",)), name=name,
    )


class LlamaAttention(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, allowed: jax.Array
    ) -> jax.Array:
        """`allowed` is a boolean [B, 1, 1, L, L] (query, key) mask."""
        cfg = self.config
        batch, length, _ = x.shape
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.qkv_bias
        q = dense(heads * head_dim, self.dtype, "q_proj", ("embed", "heads"), use_bias=bias)(x)
        k = dense(kv_heads * head_dim, self.dtype, "k_proj", ("embed", "kv"), use_bias=bias)(x)
        v = dense(kv_heads * head_dim, self.dtype, "v_proj", ("embed", "kv"), use_bias=bias)(x)
        q = _apply_rope(q.reshape(batch, length, heads, head_dim), cos, sin)
        k = _apply_rope(k.reshape(batch, length, kv_heads, head_dim), cos, sin)
        v = v.reshape(batch, length, kv_heads, head_dim)
        # Grouped-query attention: query head h reads KV head h // group, the
        # same assignment as HF's repeat_kv, but by splitting the query heads
        # into (kv_head, group) instead of materialising repeated K and V.
        group = heads // kv_heads
        q = q.reshape(batch, length, kv_heads, group, head_dim)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) * (head_dim**-0.5)
        # Softmax in float32; `where` instead of an additive bias cannot
        # overflow, and a fully masked row becomes uniform rather than NaN.
        scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(batch, length, heads * head_dim)
        out = sharding.constrain(out, ("batch", "length", "act_heads"))
        return dense(cfg.hidden_size, self.dtype, "o_proj", ("heads", "embed"),
                     use_bias=cfg.o_bias)(out)


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        width = cfg.intermediate_size
        gate = dense(width, self.dtype, "gate_proj", ("embed", "mlp"), use_bias=False)(x)
        up = dense(width, self.dtype, "up_proj", ("embed", "mlp"), use_bias=False)(x)
        hidden = sharding.constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return dense(cfg.hidden_size, self.dtype, "down_proj", ("mlp", "embed"),
                     use_bias=False)(hidden)


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, allowed: jax.Array
    ) -> jax.Array:
        cfg = self.config
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        x = x + LlamaAttention(cfg, self.dtype, name="self_attn")(
            _rms_norm(cfg, self.dtype, "input_layernorm")(x), cos, sin, allowed
        )
        return x + LlamaMLP(cfg, self.dtype, name="mlp")(
            _rms_norm(cfg, self.dtype, "post_attention_layernorm")(x)
        )


class LlamaBackbone(nn.Module):
    """Token ids -> final hidden states [B, L, hidden_size] (after `norm`).

    Inputs must be RIGHT-padded: position ids are arange(L), so each row's
    real tokens sit at positions 0..n-1 exactly as in an unpadded pass.
    `remat` names a sharding.REMAT_POLICIES entry, applied to every block.
    With `positions` the rows are packed (layers.attention_allowed):
    attention_mask holds segment ids.
    """

    config: LlamaConfig
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 positions: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[1]
        x = embed(cfg.vocab_size, cfg.hidden_size, self.dtype, "embed_tokens",
                  ("vocab", "embed"))(input_ids)
        # Angles in float32 whatever the compute dtype (as HF does): bf16
        # positions would already be wrong past 256.
        at = jnp.arange(length) if positions is None else positions
        angles = at.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
        angles = jnp.concatenate([angles, angles], axis=-1)
        cos, sin = jnp.cos(angles).astype(self.dtype), jnp.sin(angles).astype(self.dtype)
        # A query may attend to a key iff the key is not in its future and is
        # a real token; padding queries' outputs are garbage the pooling skips.
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        allowed = causal[None, None, None] & attention_allowed(
            attention_mask, packed=positions is not None)[:, None]
        block = sharding.remat_block(LlamaBlock, self.remat)
        for i in range(cfg.num_hidden_layers):
            x = block(cfg, self.dtype, name=f"layers_{i}")(x, cos, sin, allowed)
        return _rms_norm(cfg, self.dtype, "norm")(x)


# Flax parameter path <- Hugging Face tensor name, `{i}` = layer index. "T":
# PyTorch nn.Linear weights are [out, in], Flax Dense kernels [in, out].
# Bias-free: right for Llama without attention_bias and SmolLM2; use
# `hf_weight_map(config)` for the full table of any config.
HF_WEIGHT_MAP: tuple[tuple, ...] = (
    ("embed_tokens/embedding", "embed_tokens.weight"),
    ("layers_{i}/input_layernorm/scale", "layers.{i}.input_layernorm.weight"),
    ("layers_{i}/self_attn/q_proj/kernel", "layers.{i}.self_attn.q_proj.weight", "T"),
    ("layers_{i}/self_attn/k_proj/kernel", "layers.{i}.self_attn.k_proj.weight", "T"),
    ("layers_{i}/self_attn/v_proj/kernel", "layers.{i}.self_attn.v_proj.weight", "T"),
    ("layers_{i}/self_attn/o_proj/kernel", "layers.{i}.self_attn.o_proj.weight", "T"),
    ("layers_{i}/post_attention_layernorm/scale", "layers.{i}.post_attention_layernorm.weight"),
    ("layers_{i}/mlp/gate_proj/kernel", "layers.{i}.mlp.gate_proj.weight", "T"),
    ("layers_{i}/mlp/up_proj/kernel", "layers.{i}.mlp.up_proj.weight", "T"),
    ("layers_{i}/mlp/down_proj/kernel", "layers.{i}.mlp.down_proj.weight", "T"),
    ("norm/scale", "norm.weight"),
)

_QKV_BIAS_ROWS = tuple(
    (f"layers_{{i}}/self_attn/{p}/bias", f"layers.{{i}}.self_attn.{p}.bias")
    for p in ("q_proj", "k_proj", "v_proj")
)
_O_BIAS_ROWS = (("layers_{i}/self_attn/o_proj/bias", "layers.{i}.self_attn.o_proj.bias"),)


def hf_weight_map(config: LlamaConfig) -> tuple[tuple, ...]:
    """The weight table for this config: HF_WEIGHT_MAP plus its bias rows
    (Qwen2: q/k/v; Llama with attention_bias: q/k/v/o)."""
    return (
        HF_WEIGHT_MAP
        + (_QKV_BIAS_ROWS if config.qkv_bias else ())
        + (_O_BIAS_ROWS if config.o_bias else ())
    )


# LlamaForCausalLM / Qwen2ForCausalLM / ...ForSequenceClassification nest the
# backbone under `model.`; a bare LlamaModel checkpoint has no prefix.
HF_PREFIXES: tuple[str, ...] = ("model.",)

# Checkpoint tensors we leave unused: the LM head of untied checkpoints (the
# classifier has its own), and RoPE buffers that old checkpoints saved.
HF_UNNEEDED: tuple[str, ...] = (
    r"^lm_head\.weight$",
    r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$",
)
