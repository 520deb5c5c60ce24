"""Frozen features: pooled hidden states extracted once, and a linear head.

The release's vision experiment (a linear probe on frozen features trained
on weak soft labels) applied to any model family. Features are extracted
once per (model, pooling, layer, examples) through the stage cache, so every
seed and loss reuses them; heads train with every loss, the confidence loss
included, through the same jitted train step as full finetuning.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.core import sharding
from w2s_jax.data import batching
from w2s_jax.models import classifier, registry
from w2s_jax.core.progress import Progress


class LinearHead(nn.Module):
    """logits = features @ W + b. The bias matters here: pooled features of
    a frozen model are not centred, unlike a finetuned backbone's."""
    num_classes: int

    @nn.compact
    def __call__(self, features):
        zeros = nn.initializers.zeros_init()
        return nn.Dense(
            self.num_classes,
            kernel_init=sharding.logical_init(zeros, ("embed", "classes")),
            bias_init=sharding.logical_init(zeros, ("classes",)),
            name="head")(features.astype(jnp.float32))


def extract(model: registry.ResolvedModel, params, ids: list[np.ndarray], *,
            pooling: str, layer: int, batch_size: int, max_ctx: int, mesh,
            name: str) -> np.ndarray:
    """Pooled features [N, D] of `layer` (-1 = the backbone's output).

    Layer k >= 1 is the residual stream after the first k blocks, read with
    flax's capture_intermediates, so no family needs extra code for it.
    """
    backbone = registry.backbone(model)
    pool = classifier.POOLINGS[pooling]
    block = registry.block_name(model, layer) if layer != -1 else None

    def featurize(p, inputs):
        with sharding.activation_rules(mesh):
            return pooled(p, inputs)

    def pooled(p, inputs):
        input_ids, mask = inputs
        if block is None:
            hidden = backbone.apply({"params": p}, input_ids, mask)
        else:
            _, state = backbone.apply(
                {"params": p}, input_ids, mask,
                capture_intermediates=lambda mdl, _: mdl.name == block)
            hidden = state["intermediates"][block]["__call__"][0]
        return pool(hidden, mask).astype(jnp.float32)

    # Params keep whatever sharding init_params gave them (None: as passed).
    step = jax.jit(featurize, in_shardings=(None, sharding.batch_sharding(mesh, 0)),
                   out_shardings=sharding.replicated(mesh))
    lengths = np.array([len(x) for x in ids])
    batches = batching.eval_batches(lengths, batch_size=batch_size)
    rungs = batching.fit_rungs(lengths, batches, max_ctx)
    progress = Progress(name, len(batches), batch_size)
    out = None
    for i, indices in enumerate(batches, start=1):
        inputs = batching.pad(ids, indices, rows=batch_size, max_ctx=max_ctx,
                              pad_id=model.tokenizer.pad_id, rungs=rungs)
        feats = np.asarray(step(params, sharding.to_global(mesh, inputs)))
        if out is None:
            out = np.zeros((len(ids), feats.shape[1]), np.float32)
        out[indices] = feats[:len(indices)]
        if i == 1 or i % 20 == 0 or i == len(batches):
            progress.update(i)
    return out


def standardize(train: np.ndarray, *others: np.ndarray):
    """Z-score every set with the training pool's statistics, so one head
    learning rate suits every model's feature scale."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]
