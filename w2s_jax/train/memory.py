"""Memory per device of a finetuning stage, estimated before it trains.

`estimate` adds up, for one device of the mesh:
  params       each parameter leaf's bytes as its sharding splits it (the
               shard a device holds: replicated leaves count whole);
  grads        the trainable leaves' float32 gradients, sharded like them,
               and with gradient accumulation (batch_size > minibatch_size)
               the scan's accumulation buffer as well: an upper bound, since
               XLA may apply a leaf's update as soon as its gradient is ready;
  optimizer    Adam / AdamW: two float32 moments per TRAINABLE leaf, sharded
               like it (the step counts are negligible);
  activations  what one micro batch keeps for the backward pass (see
               `_block_activations`) on the rows this device holds;
  gathered     under fsdp, the largest embedding table that fsdp splits,
               gathered whole over fsdp for its lookup (models.layers.
               GatheredEmbed): a whole copy in the compute dtype in the
               forward pass and, if it trains, a whole float32 gradient
               before the reduce-scatter in the backward pass (one buffer
               serves both: GPT-2 6x256 with vocab 50257 on data=2,fsdp=4
               measured +46.4 MiB of temporaries for a 49.1 MiB table,
               bench/RESULTS.md 3). Counted once: tables whose gradients
               XLA keeps whole at the same time would add more.
`format` makes the one line the stage prints before training.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from w2s_jax.core import sharding
from w2s_jax.data import batching
from w2s_jax.models import registry

F32 = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes per device."""
    params: int
    grads: int
    optimizer: int
    activations: int
    micro_batch: int  # rows of one micro batch (the whole mesh's)
    seq_len: int
    gathered: int = 0

    @property
    def total(self) -> int:
        return (self.params + self.grads + self.optimizer + self.activations
                + self.gathered)


def _shard_bytes(leaf, leaf_sharding) -> int:
    """Bytes of the shard of `leaf` one device holds under `leaf_sharding`
    (None: replicated)."""
    shape = tuple(leaf.shape)
    if leaf_sharding is not None:
        shape = tuple(leaf_sharding.shard_shape(shape))
    return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def _leaf_sharding(leaf, abstract):
    # A jax.Array (or a ShapeDtypeStruct given one) knows its sharding; else
    # the abstract shardings passed in (e.g. sharding.param_shardings').
    found = getattr(leaf, "sharding", None)
    return found if found is not None else abstract


def estimate(params, trainable=None, *, settings, seq_len: int, model,
             compute_dtype: str = "float32", remat: str = "none", mesh,
             shardings=None, sequences_per_row: int = 1, lm_head: bool = False,
             linear_probe: bool = False) -> Estimate:
    """Bytes per device of training `params` with `settings`.

    `params`: the (sharded) parameter tree, or abstract leaves (shape and
    dtype) with `shardings` (a like tree of shardings; None = replicated).
    `trainable`: a like tree of bools, or loop.finetune's `trainable(path)`
    (e.g. LoRA: base weights frozen), or None: every leaf trains. `model`: the registry.ResolvedModel, whose
    family and backbone config give the activation formula; `seq_len`: the
    padded length of the longest batch. `sequences_per_row`: sequences the
    backbone sees per example (a ChoiceLearner's K candidates);
    `lm_head`: the candidates are scored by the tied LM head (logits over
    the vocabulary); `linear_probe`: gradients stop at the pooled features,
    so the backbone keeps no activations for a backward pass.
    """
    leaves = jax.tree.leaves(params)
    abstract = ([None] * len(leaves) if shardings is None else
                jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(
                    x, jax.sharding.Sharding)))
    if len(abstract) == 1 and len(leaves) > 1:  # one sharding for all
        abstract = abstract * len(leaves)
    if callable(trainable):  # loop.finetune's trainable(path) (LoRA)
        trainable = jax.tree_util.tree_map_with_path(
            lambda path, _: bool(trainable(tuple(
                getattr(k, "key", getattr(k, "name", k)) for k in path))),
            params)
    mask = ([True] * len(leaves) if trainable is None else
            [bool(t) for t in jax.tree.leaves(trainable)])
    if len(mask) != len(leaves):
        raise ValueError(f"trainable has {len(mask)} leaves but params "
                         f"{len(leaves)}")
    param_bytes = trained_f32 = gathered = 0
    fsdp = mesh.shape.get("fsdp", 1)
    tables = [jax.tree_util.keystr(path).endswith("['embedding']")
              for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for leaf, shard, trains, table in zip(leaves, abstract, mask, tables):
        s = _leaf_sharding(leaf, shard)
        param_bytes += _shard_bytes(leaf, s)
        if trains:  # gradients and moments are float32 whatever the param
            trained_f32 += _shard_bytes(leaf, s) // np.dtype(
                leaf.dtype).itemsize * F32
        if table and fsdp > 1:
            # Cast to the compute dtype, then gathered; its gradient float32.
            per_element = max(DTYPE_BYTES[compute_dtype], F32 if trains else 0)
            gathered = max(gathered,
                           _gathered_elements(leaf, s, mesh) * per_element)
    n_micro = settings.batch_size // settings.minibatch_size
    grads = trained_f32 * (2 if n_micro > 1 else 1)
    rows = settings.minibatch_size
    local_rows = -(-rows // sharding.batch_size_divisor(mesh))
    activations = activation_bytes(
        model, rows=local_rows * sequences_per_row, seq_len=seq_len,
        compute_dtype=compute_dtype, remat=remat,
        tensor=mesh.shape.get("tensor", 1), lm_head=lm_head,
        linear_probe=linear_probe)
    return Estimate(params=param_bytes, grads=grads, optimizer=2 * trained_f32,
                    activations=activations, micro_batch=rows, seq_len=seq_len,
                    gathered=gathered)


def _gathered_elements(leaf, leaf_sharding, mesh) -> int:
    """Elements of `leaf` on one device once gathered whole over fsdp
    (still split over its other mesh axes); 0 if fsdp does not split it,
    so that nothing is gathered."""
    spec = getattr(leaf_sharding, "spec", None) or ()
    split = [a for entry in spec if entry is not None
             for a in ((entry,) if isinstance(entry, str) else entry)]
    if "fsdp" not in split:
        return 0
    shard = _shard_bytes(leaf, leaf_sharding) // np.dtype(leaf.dtype).itemsize
    return shard * mesh.shape["fsdp"]


def _block_shape(model) -> dict:
    """The sizes the activation formula needs, per family."""
    cfg = model.backbone_config
    if model.family == "gpt2":
        return dict(layers=cfg.n_layer, hidden=cfg.n_embd, q=cfg.n_embd,
                    kv=cfg.n_embd, inter=4 * cfg.n_embd, heads=cfg.n_head,
                    vocab=cfg.vocab_size)
    if model.family == "llama":
        return dict(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                    q=cfg.num_attention_heads * cfg.head_dim,
                    kv=cfg.num_key_value_heads * cfg.head_dim,
                    inter=cfg.intermediate_size, heads=cfg.num_attention_heads,
                    vocab=cfg.vocab_size)
    if model.family in ("bert", "mpnet"):
        return dict(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                    q=cfg.hidden_size, kv=cfg.hidden_size,
                    inter=cfg.intermediate_size, heads=cfg.num_attention_heads,
                    vocab=cfg.vocab_size)
    raise ValueError(f"no activation formula for model family {model.family!r}")


def _block_activations(family: str, d: dict, tensor: int) -> tuple[float, float]:
    """(elements per token in the compute dtype, float32 [L, L] score
    matrices per head) that one transformer block keeps for its backward
    pass without rematerialisation, on one device.

    Where it comes from: Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models", sec. 4.1, count
    34 s*b*h + 5 a*s^2*b bytes per layer (16-bit, with dropout masks). With
    no dropout (these models have none) and counted in elements, GPT-2's
    block keeps 16 h per token: the LayerNorm inputs and outputs (4 h),
    q|k|v (3 h), the attention output (h), and the MLP's input to and output
    of the GELU (8 h), plus the softmax output (1 a*s^2). JAX keeps more:
    its autodiff saves the masked scores and the exp besides the softmax
    output, all float32 (3 score matrices), and the tanh-approximate GELU's
    intermediates, of which XLA still materialises about two more [s, 4h]
    tensors after fusion (jax's `saved_residuals` lists six; XLA's buffer
    assignment on CPU holds 24 h + 3 a*s^2 per block: tests/test_memory.py).
    The other families are the same count with their own shapes: Llama's
    gated MLP keeps gate, up, silu(gate) and the product (4 I, +1 I for the
    sigmoid), and q/k are kept before and after the rotary embedding;
    BERT/MPNet (post-LN, exact GELU) keep 3 I in the MLP.

    What it leaves out: XLA's fusion choices differ by backend (a GPU
    fuses more, so this errs high there), the [B, 1, L, L] boolean mask
    (shared by all blocks), LayerNorm statistics (per token), and the
    working memory of the matmuls themselves. Splits over `tensor`: the
    heads and the MLP's hidden units (activation rules act_heads, act_mlp).
    """
    h, q, kv, inter = d["hidden"], d["q"], d["kv"], d["inter"]
    if family == "gpt2":
        per_token = 4 * h + (q + 2 * kv + q) / tensor + 4 * inter / tensor
    elif family == "llama":
        per_token = 4 * h + (3 * q + 3 * kv) / tensor + 5 * inter / tensor
    else:  # bert, mpnet: post-LN, separate q, k, v
        per_token = 4 * h + (q + 2 * kv + q) / tensor + 3 * inter / tensor
    return per_token, 3 * d["heads"] / tensor


def _saved_with_remat(family: str, d: dict, remat: str, tensor: int
                      ) -> tuple[float, float]:
    """Per block, what stays saved between the forward and backward pass
    under `remat` (sharding.REMAT_POLICIES)."""
    full_tokens, full_scores = _block_activations(family, d, tensor)
    if remat == "none":
        return full_tokens, full_scores
    if remat == "full":  # the block's input only
        return d["hidden"], 0.0
    if remat == "dots":  # the input and the weight matmuls' outputs
        # (q|k|v, attention out-projection, the MLP's up projection(s));
        # attention's batched einsums are recomputed.
        up = 2 if family == "llama" else 1
        return (2 * d["hidden"] + (d["q"] + 2 * d["kv"]) / tensor
                + up * d["inter"] / tensor), 0.0
    raise ValueError(f"remat={remat!r} is not valid; choose one of: "
                     f"{', '.join(sharding.REMAT_POLICIES)}")


def activation_bytes(model, *, rows: int, seq_len: int, compute_dtype: str,
                     remat: str, tensor: int = 1, lm_head: bool = False,
                     linear_probe: bool = False) -> int:
    """Peak activation bytes of one micro batch of `rows` sequences (this
    device's) of `seq_len` tokens, forward and backward.

    Every block's saved activations (`_saved_with_remat`), plus the working
    set of the one block being differentiated: under remat its recomputed
    activations, and its activation gradients (the MLP hidden twice and one
    score matrix), plus the final norm and pooled features (float32) and
    the head's logits: [rows, classes] for a classifier, negligible, but
    [rows, seq_len, vocab] float32, with their log-softmax and gradient,
    for candidates scored by the LM head.
    """
    if compute_dtype not in DTYPE_BYTES:
        raise ValueError(f"compute_dtype={compute_dtype!r} is not valid; "
                         f"choose one of: {', '.join(DTYPE_BYTES)}")
    d = _block_shape(model)
    width = DTYPE_BYTES[compute_dtype]
    tokens = rows * seq_len
    scores = rows * seq_len * seq_len * F32  # one head's [L, L], all rows
    full_tokens, full_scores = _block_activations(model.family, d, tensor)
    block = full_tokens * tokens * width + full_scores * scores
    grads = (2 * d["inter"] / tensor * tokens * width
             + d["heads"] / tensor * scores)
    head = 2 * d["hidden"] * tokens * F32
    if lm_head:
        head += 3 * d["vocab"] / tensor * tokens * F32
    if linear_probe:  # a forward pass only: one block at a time
        return int(block + head)
    saved_tokens, saved_scores = _saved_with_remat(model.family, d, remat,
                                                   tensor)
    saved = d["layers"] * (saved_tokens * tokens * width
                           + saved_scores * scores)
    working = grads + (block if remat != "none" else 0)
    return int(saved + working + head)


def for_learner(learner, params, mesh, lengths: np.ndarray) -> Estimate | None:
    """The estimate for a stage's learner, or None for a FeatureLearner (a
    linear head on features, whose memory is negligible). `lengths`: tokens
    of each training example, for the longest padded batch."""
    model = getattr(learner, "model", None)
    if model is None or getattr(model, "backbone_config", None) is None:
        return None
    settings = learner.settings
    seq_len = batching.padded_length(int(np.max(lengths)), settings.max_ctx)
    mode = getattr(learner, "mode", None)
    lm_head = mode == "choice" and _choice_by_lm(model)
    return estimate(
        params, getattr(learner, "trainable", None), settings=settings,
        seq_len=seq_len, model=model,
        compute_dtype=learner.compute_dtype, remat=learner.remat, mesh=mesh,
        sequences_per_row=getattr(learner, "candidates", 1), lm_head=lm_head,
        linear_probe=learner.model_config.linear_probe)


def _choice_by_lm(model) -> bool:
    # steps.choice_by_lm, without importing steps (and optax) here.
    return (model.family in registry.DECODER_FAMILIES and
            getattr(model.backbone_config, "tie_word_embeddings", True))


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def format(est: Estimate) -> str:  # noqa: A001 (the brief's name)
    """One line: params, grads, optimizer, activations and their total."""
    return (f"[memory] per device: params {_size(est.params)}, "
            f"grads {_size(est.grads)}, optimizer {_size(est.optimizer)}, "
            f"activations {_size(est.activations)} (micro batch "
            f"{est.micro_batch} x {est.seq_len} tokens), "
            + (f"gathered embeddings {_size(est.gathered)}, "
               if est.gathered else "")
            + f"total {_size(est.total)}")
