"""Building blocks shared by the model families (gpt2, bert, mpnet, llama).

Family modules import from here and never from each other. Parameters are
always float32 (`dtype` is only the compute dtype) and every parameter
dimension carries logical axis names, which `sharding.RULES` maps to the
device mesh.

Also holds `EncoderLayer`, the post-LayerNorm transformer layer that BERT
and MPNet both use (MPNet adds a relative position bias to its scores).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax.core import sharding
from w2s_jax.models import dense_dot, lora

def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU as PyTorch writes it, x/2 (1 + erf(x/sqrt 2)).

    jax.nn.gelu(approximate=False) computes the same function through
    erfc, which XLA:CPU expands into two branches with an exp: on
    MiniLM-L6's train step that cost 1.6% more step time (bench/RESULTS.md
    4i). Both forms are within 1e-6 of PyTorch's values and gradients.
    Computed in float32 whatever the compute dtype, as PyTorch computes a
    bfloat16 GELU: in bfloat16, 1 + erf cancels to 0 below x = -3.5.
    """
    x32 = x.astype(jnp.float32)
    return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * (2.0 ** -0.5)))).astype(x.dtype)


# Hugging Face activation names -> functions. "gelu_new", "gelu_pytorch_tanh"
# and "gelu_fast" are all the tanh approximation of GELU (GPT-2's own choice);
# "gelu" is the exact erf form.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": gelu_erf,
    "relu": jax.nn.relu,
}

# The families' common initialiser; only used when a model is built from
# scratch (tests), since real runs load pretrained weights over it.
INIT = nn.initializers.normal(stddev=0.02)


def check_model_type(hf_config: dict, supported: tuple[str, ...]) -> None:
    model_type = hf_config.get("model_type")
    if model_type not in supported:
        raise ValueError(f"Unsupported model_type {model_type!r}; supported: {list(supported)}")


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


def dense(
    features: int, dtype: Any, name: str, axes: tuple[str, str], *, use_bias: bool = True
) -> nn.Dense:
    """`axes`: logical names of the kernel's (input, output) dimensions.
    Inside a `lora.scope` that targets `name`, the layer carries an adapter.
    Its matmul is dense_dot's, whose weight gradient XLA:CPU runs faster."""
    spec = lora.active()
    fields = dict(
        features=features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=sharding.logical_init(INIT, axes),
        bias_init=sharding.logical_init(nn.initializers.zeros_init(), axes[1:]), name=name,
        dot_general=dense_dot.dot_general,
    )
    if spec is not None and name in spec.targets:
        return LoraDense(**fields, rank=spec.rank, scale=spec.scale, axes=axes)
    return nn.Dense(**fields)


def _lora_a_init(key, shape, dtype=jnp.float32):
    """Uniform in +-1/sqrt(fan_in): peft's kaiming_uniform(a=sqrt(5)) on A."""
    bound = 1.0 / jnp.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoraDense(nn.Dense):
    """nn.Dense plus a low-rank adapter (models/lora.py): the kernel and
    bias keep their names, so pretrained weights load as for nn.Dense."""

    rank: int = 8
    scale: float = 1.0
    axes: tuple[str, str] = ("embed", "embed")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        a = self.param("lora_a", sharding.logical_init(_lora_a_init, (self.axes[0], "lora")),
                       (x.shape[-1], self.rank), jnp.float32)
        b = self.param("lora_b", sharding.logical_init(nn.initializers.zeros_init(),
                                                       ("lora", self.axes[1])),
                       (self.rank, self.features), jnp.float32)
        update = (x.astype(self.dtype) @ a.astype(self.dtype)) @ b.astype(self.dtype)
        return y + (update * self.scale).astype(y.dtype)


class GatheredEmbed(nn.Embed):
    """nn.Embed whose table is gathered whole over fsdp before the lookup.

    Under fsdp the table's feature dimension is split like every weight's
    "embed" dimension, while the looked-up rows are split by batch. Looked
    up from the split table, the rows (and, in the backward pass, their
    cotangents) would have to move from one split to the other, which XLA
    can only do by replicating ("involuntary full rematerialization").
    FSDP's own pattern avoids it: all-gather the weight before use, and the
    gradient is reduce-scattered back to the weight's split.
    """

    # Logical names of the gathered table's dimensions: its rows as they
    # are (whole where the mesh does not divide them, as the parameter's),
    # its features whole over fsdp ("act_embed" where they are "embed").
    gathered_axes: tuple[str, str] = ("vocab", "act_embed")

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("embedding lookups take integer ids")
        # Cast first: with bfloat16 compute, half the bytes are gathered.
        (table,) = self.promote_dtype(self.embedding, dtype=self.dtype,
                                      inexact=False)
        table = sharding.constrain(table, self.gathered_axes)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(table, inputs.shape + (self.features,))
        return jnp.take(table, inputs, axis=0)


def embed(
    num_embeddings: int, features: int, dtype: Any, name: str, axes: tuple[str, str]
) -> nn.Embed:
    """`axes`: logical names of the table's (row, feature) dimensions."""
    return GatheredEmbed(
        num_embeddings, features, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=sharding.logical_init(INIT, axes), name=name,
        gathered_axes=(axes[0], "act_embed" if axes[1] == "embed" else axes[1]),
    )


def layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
        scale_init=sharding.logical_init(nn.initializers.ones_init(), ("norm",)),
        bias_init=sharding.logical_init(nn.initializers.zeros_init(), ("norm",)), name=name,
    )


def key_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, L] 0/1 mask -> boolean [B, 1, 1, L]: every query sees the real keys."""
    return attention_mask.astype(bool)[:, None, None, :]


# Packed rows (packing.pack) hold several examples each: their
# attention_mask is the segment id of each token (0: padding, each example's
# tokens one contiguous run of its own id), and the classifier passes the
# backbone `positions` counted from each segment's start. A backbone given
# positions attends within segments only, so every example sees exactly the
# tokens and positions it would see alone in a row of its own.


def segment_positions(segments: jax.Array) -> jax.Array:
    """[B, L] segment ids -> each token's position within its (contiguous)
    segment: its index minus the index where its run of equal ids began."""
    index = jnp.arange(segments.shape[1])[None, :]
    starts = jnp.concatenate([jnp.ones_like(segments[:, :1], dtype=bool),
                              segments[:, 1:] != segments[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def attention_allowed(attention_mask: jax.Array, packed: bool) -> jax.Array:
    """Boolean (query, key) mask: [B, 1, 1, L] (key_mask) for one example
    per row; packed, [B, 1, L, L]: a query sees the real keys of its own
    segment only."""
    if not packed:
        return key_mask(attention_mask)
    same = attention_mask[:, :, None] == attention_mask[:, None, :]
    return (same & (attention_mask > 0)[:, None, :])[:, None]


class EncoderAttention(nn.Module):
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


class EncoderLayer(nn.Module):
    """Post-LayerNorm block: x = ln(x + attn(x)); x = ln(x + mlp(x)).

    `config` also needs intermediate_size, hidden_act and layer_norm_eps.
    """

    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array, bias: jax.Array | None) -> jax.Array:
        cfg = self.config
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        attn = EncoderAttention(cfg, self.dtype, name="attention")(x, allowed, bias)
        x = layer_norm(cfg.layer_norm_eps, self.dtype, "attention_norm")(x + attn)
        h = dense(cfg.intermediate_size, self.dtype, "intermediate", ("embed", "mlp"))(x)
        h = sharding.constrain(ACTIVATIONS[cfg.hidden_act](h), ("batch", "length", "act_mlp"))
        h = dense(cfg.hidden_size, self.dtype, "output", ("mlp", "embed"))(h)
        return layer_norm(cfg.layer_norm_eps, self.dtype, "output_norm")(x + h)


def linear_rows(flax: str, hf: str) -> tuple[tuple, ...]:
    """Table rows for one nn.Linear -> nn.Dense. PyTorch stores the weight
    [out, in] and Dense the kernel [in, out], hence the transpose."""
    return ((flax + "/kernel", hf + ".weight", "T"), (flax + "/bias", hf + ".bias"))


def norm_rows(flax: str, hf: str) -> tuple[tuple, ...]:
    return ((flax + "/scale", hf + ".weight"), (flax + "/bias", hf + ".bias"))


# The feed-forward half of an EncoderLayer is named identically in BERT and
# MPNet checkpoints.
ENCODER_MLP_MAP: tuple[tuple, ...] = (
    *linear_rows("layer_{i}/intermediate", "encoder.layer.{i}.intermediate.dense"),
    *linear_rows("layer_{i}/output", "encoder.layer.{i}.output.dense"),
    *norm_rows("layer_{i}/output_norm", "encoder.layer.{i}.output.LayerNorm"),
)
