"""Generative finetuning: the next-token loss of a decoder on unlabelled text.

The paper trains the strong model as a language model on task text before
its classification finetunes (+10-20 points of PGR on reward modelling).
The LM head is the token embedding table, tied as the checkpoint has it
(registry.check_tied_decoder refuses an untied head, which is not loaded).

The training loop (loop.finetune) drives any `forward(params, inputs) ->
[B, K]` with a loss of (outputs, targets); here the forward returns each
example's mean next-token negative log-likelihood as a [B, 1] output and
`NEXT_TOKEN` takes it as the per-example loss, so the LM stage gets the
loop's sharding, accumulation, checkpoints, resume and progress unchanged.
Each example weighs the same in training; held-out figures are per token.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.core import sharding
from w2s_jax.data import batching
from w2s_jax.models import classifier, registry
from w2s_jax.train import losses


def lm_forward(model: registry.ResolvedModel, backbone) -> Callable:
    """forward(backbone params, (ids, mask)) -> [B, 1] mean next-token NLL
    per example (0 for a row with fewer than two tokens)."""
    def forward(params, inputs):
        input_ids, mask = inputs
        hidden = backbone.apply({"params": params}, input_ids, mask)
        logits = registry.lm_logits(model, params, hidden.astype(jnp.float32))
        total, count = classifier.token_nll(logits, input_ids, mask)
        return (total / jnp.maximum(count, 1.0))[:, None]
    return forward


def _identity_loss(*, logits, **_):
    return logits[:, 0]


# The forward already is the loss (see the module docstring).
NEXT_TOKEN = losses.Loss("next_token", per_example=_identity_loss)


def heldout_nll(model: registry.ResolvedModel, backbone, params,
                ids: list[np.ndarray], *, batch_size: int, max_ctx: int,
                mesh) -> float:
    """Mean next-token NLL per token (nats) of `ids` under `params`."""
    def sums(p, inputs):
        input_ids, mask = inputs
        with sharding.activation_rules(mesh):
            hidden = backbone.apply({"params": p}, input_ids, mask)
            logits = registry.lm_logits(model, p, hidden.astype(jnp.float32))
        total, count = classifier.token_nll(logits, input_ids, mask)
        return total.sum(), count.sum()

    step = jax.jit(sums, in_shardings=(None, sharding.batch_sharding(mesh, 0)),
                   out_shardings=sharding.replicated(mesh))
    lengths = np.array([len(x) for x in ids])
    total = count = 0.0
    batches = batching.eval_batches(lengths, batch_size=batch_size)
    rungs = batching.fit_rungs(lengths, batches, max_ctx)
    for indices in batches:
        # Filler rows are all padding: they predict nothing.
        inputs = batching.pad(ids, indices, rows=batch_size, max_ctx=max_ctx,
                              pad_id=model.tokenizer.pad_id, rungs=rungs)
        t, c = step(params, sharding.to_global(mesh, inputs))
        total, count = total + float(t), count + float(c)
    return total / max(count, 1.0)
