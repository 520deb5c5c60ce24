"""GPT-2 backbone in Flax linen, numerically matching Hugging Face `GPT2Model`.

Only the parts the weak-to-strong experiments need: a causal decoder that maps
token ids to final (post-`ln_f`) hidden states. There is no dropout anywhere,
because the paper fine-tunes with dropout turned off, and no KV cache, because
we never generate.

Parameters are always float32; `dtype` only sets the compute dtype, so mixed
precision never changes what is stored or checkpointed. Every parameter
dimension and the main activations carry logical axis names, which
`sharding.RULES` maps to the device mesh.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax.core import sharding
from w2s_jax.models.layers import (
    ACTIVATIONS, attention_allowed, check_model_type, dense, embed, layer_norm,
)

SUPPORTED_MODEL_TYPES = ("gpt2",)


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unsupported activation {self.activation!r}; supported: {sorted(ACTIVATIONS)}"
            )
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @classmethod
    def from_hf(cls, hf_config: dict) -> "GPT2Config":
        """Builds the config from a Hugging Face `config.json` dict."""
        check_model_type(hf_config, SUPPORTED_MODEL_TYPES)
        n_embd = hf_config["n_embd"]
        # Variants this module does not implement would otherwise load without
        # complaint (same parameter shapes) and silently compute something else.
        n_inner = hf_config.get("n_inner")
        if n_inner not in (None, 4 * n_embd):
            raise ValueError(f"Unsupported n_inner={n_inner}; only 4 * n_embd ({4 * n_embd})")
        if not hf_config.get("scale_attn_weights", True):
            raise ValueError("Unsupported scale_attn_weights=False")
        if hf_config.get("scale_attn_by_inverse_layer_idx", False):
            raise ValueError("Unsupported scale_attn_by_inverse_layer_idx=True")
        return cls(
            vocab_size=hf_config["vocab_size"],
            n_positions=hf_config["n_positions"],
            n_embd=n_embd,
            n_layer=hf_config["n_layer"],
            n_head=hf_config["n_head"],
            layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
            activation=hf_config.get("activation_function", "gelu_new"),
        )


class GPT2Attention(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
        """`allowed` is a boolean [B, 1, L, L] (query, key) mask."""
        cfg = self.config
        batch, length, _ = x.shape
        head_dim = cfg.n_embd // cfg.n_head
        # One fused projection, split as q|k|v along the features, like HF.
        qkv = dense(3 * cfg.n_embd, self.dtype, "c_attn", ("embed", "qkv"))(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(batch, length, cfg.n_head, head_dim) for t in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim**-0.5)
        # Softmax in float32 so bf16 compute cannot saturate it. `where` rather
        # than adding a bias avoids overflow to -inf; a fully masked row (an
        # all-padding sequence) then becomes uniform instead of NaN.
        scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, cfg.n_embd)
        out = sharding.constrain(out, ("batch", "length", "act_heads"))
        return dense(cfg.n_embd, self.dtype, "c_proj", ("heads", "embed"))(out)


class GPT2MLP(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = dense(4 * cfg.n_embd, self.dtype, "c_fc", ("embed", "mlp"))(x)
        x = sharding.constrain(ACTIVATIONS[cfg.activation](x), ("batch", "length", "act_mlp"))
        return dense(cfg.n_embd, self.dtype, "c_proj", ("mlp", "embed"))(x)


class GPT2Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
        cfg = self.config
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        eps = cfg.layer_norm_epsilon
        x = x + GPT2Attention(cfg, self.dtype, name="attn")(
            layer_norm(eps, self.dtype, "ln_1")(x), allowed
        )
        return x + GPT2MLP(cfg, self.dtype, name="mlp")(layer_norm(eps, self.dtype, "ln_2")(x))


class GPT2Backbone(nn.Module):
    """Token ids -> final hidden states [B, L, n_embd] (after `ln_f`).

    Inputs must be RIGHT-padded: position ids are simply arange(L), so the
    real tokens of every row sit at positions 0..n-1, exactly as in an
    unpadded forward pass. Left padding would shift them and change outputs.
    `remat` names a sharding.REMAT_POLICIES entry, applied to every block.
    With `positions` the rows are packed (layers.attention_allowed):
    attention_mask holds segment ids.
    """

    config: GPT2Config
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 positions: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[1]
        x = embed(cfg.vocab_size, cfg.n_embd, self.dtype, "wte", ("vocab", "embed"))(input_ids)
        x = x + embed(cfg.n_positions, cfg.n_embd, self.dtype, "wpe", ("positions", "embed"))(
            jnp.arange(length)[None, :] if positions is None else positions
        )
        # A query may attend to a key iff the key is not in its future and is
        # a real token. Padding queries still get a valid row; their outputs
        # are meaningless and must be ignored by the caller (pooling does).
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        allowed = causal[None, None] & attention_allowed(attention_mask,
                                                     packed=positions is not None)
        block = sharding.remat_block(GPT2Block, self.remat)
        for i in range(cfg.n_layer):
            x = block(cfg, self.dtype, name=f"h_{i}")(x, allowed)
        return layer_norm(cfg.layer_norm_epsilon, self.dtype, "ln_f")(x)


# Flax parameter path <- Hugging Face tensor name, `{i}` = layer index. HF's
# Conv1D stores weights as [in, out], the same layout as nn.Dense kernels, so
# no entry needs a transpose.
HF_WEIGHT_MAP: tuple[tuple[str, str], ...] = (
    ("wte/embedding", "wte.weight"),
    ("wpe/embedding", "wpe.weight"),
    ("h_{i}/ln_1/scale", "h.{i}.ln_1.weight"),
    ("h_{i}/ln_1/bias", "h.{i}.ln_1.bias"),
    ("h_{i}/attn/c_attn/kernel", "h.{i}.attn.c_attn.weight"),
    ("h_{i}/attn/c_attn/bias", "h.{i}.attn.c_attn.bias"),
    ("h_{i}/attn/c_proj/kernel", "h.{i}.attn.c_proj.weight"),
    ("h_{i}/attn/c_proj/bias", "h.{i}.attn.c_proj.bias"),
    ("h_{i}/ln_2/scale", "h.{i}.ln_2.weight"),
    ("h_{i}/ln_2/bias", "h.{i}.ln_2.bias"),
    ("h_{i}/mlp/c_fc/kernel", "h.{i}.mlp.c_fc.weight"),
    ("h_{i}/mlp/c_fc/bias", "h.{i}.mlp.c_fc.bias"),
    ("h_{i}/mlp/c_proj/kernel", "h.{i}.mlp.c_proj.weight"),
    ("h_{i}/mlp/c_proj/bias", "h.{i}.mlp.c_proj.bias"),
    ("ln_f/scale", "ln_f.weight"),
    ("ln_f/bias", "ln_f.bias"),
)

# GPT2LMHeadModel / GPT2ForSequenceClassification nest the backbone under
# `transformer.`; a bare GPT2Model checkpoint has no prefix.
HF_PREFIXES: tuple[str, ...] = ("transformer.",)
