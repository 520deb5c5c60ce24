"""Training losses, chosen by name (w2s_facts.md section 3).

Every loss is split in two so that gradient accumulation over minibatches
still sees statistics of the WHOLE batch (the paper computes the confidence
loss over the batch of 32, not per minibatch):

- ``batch_targets(*, logits [B,K], targets [B,K], progress, params)`` runs
  once on the full batch, on stop-gradient logits, and returns a pytree of
  per-example arrays with leading dim B (or the loss has none at all);
- ``per_example(*, logits [b,K], targets [b,K], stats, progress, params)``
  runs on any slice of b rows, with ``stats`` sliced to the same rows, and
  returns the [b] per-example losses.

The batch loss is the mean of ``per_example`` over the batch, so the mean of
equal-sized minibatch means equals ``loss_value`` on the full batch.

``params`` is a plain dict of hyper-parameters; missing keys take the
defaults below. It is read in Python (the schedule name picks code), so it
must be static under ``jax.jit`` (close over it), while ``progress`` may be
traced. All arithmetic is float32 whatever the logits' dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

ALPHA_SCHEDULES = ("linear", "release_jump")

# Defaults of the logconf hyper-parameters. The warmup default depends on the
# schedule: 0.2 is the paper's linear warmup, 0.1 is the public release's.
DEFAULT_ALPHA_MAX = 0.5
DEFAULT_SCHEDULE = "linear"
DEFAULT_WARMUP_FRAC = {"linear": 0.2, "release_jump": 0.1}
# Exponents of the product loss, t ~ p^b * y^a; a = b = 1 in the follow-up.
DEFAULT_PRODUCT_A = 1.0
DEFAULT_PRODUCT_B = 1.0


@dataclasses.dataclass(frozen=True)
class Loss:
    name: str
    per_example: Callable[..., jax.Array]
    # None when the loss needs no whole-batch statistics.
    batch_targets: Callable[..., Any] | None = None


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """CE(z, t) = -sum_c t_c log softmax(z)_c per row, in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets.astype(jnp.float32) * log_probs, axis=-1)


def alpha_schedule(progress, *, alpha_max: float, warmup_frac: float,
                   schedule: str) -> jax.Array:
    """Weight a of the confidence term at training progress in [0, 1].

    "linear" (the paper's, the accepted fix): a = alpha_max *
    min(1, progress / warmup_frac); warmup_frac <= 0 means no warmup.
    "release_jump" (the public release's bug, kept only to reproduce it):
    a = alpha_max * progress up to warmup_frac, then a jump to alpha_max.
    """
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"unknown alpha schedule {schedule!r}; choose one of: "
                         f"{', '.join(sorted(ALPHA_SCHEDULES))}")
    progress = jnp.asarray(progress, jnp.float32)
    if schedule == "linear":
        # The guarded denominator keeps warmup_frac = 0 free of 0/0 while the
        # where() picks alpha_max for it.
        ramp = jnp.minimum(1.0, progress / jnp.maximum(warmup_frac, 1e-12))
        frac = jnp.where(warmup_frac > 0, ramp, 1.0)
    else:
        frac = jnp.where(progress <= warmup_frac, progress, 1.0)
    return alpha_max * frac


def harden_balanced(probs: jax.Array, prior: jax.Array) -> jax.Array:
    """One-hot hardened predictions whose class counts follow ``prior``.

    Binary (K = 2): exactly n1 = floor(r * B + 0.5) rows (r = prior[1], i.e.
    r*B rounded half up) become class 1: those with the smallest p_0. That is
    the paper's "h = 1 iff p_0 < tau, tau the r-quantile of p_0", made exact.
    Ties are broken by batch index (a stable sort: among equal p_0 the lower
    index becomes class 1 first), which matters at step 0, when a
    zero-initialised head gives every row the same p and the release's
    strict "p_0 < quantile" would harden nobody.

    K > 2: one-hot argmax_c of log p_c - log mean_batch(p_c) + log prior_c,
    i.e. one prior-correction step: each class's probabilities are rescaled
    so that their batch mean matches the prior before taking the argmax.
    This balances counts only approximately; ties go to the lower class
    index (jnp.argmax). For K = 2 the exact count rule above is used instead.
    """
    probs = probs.astype(jnp.float32)
    batch, num_classes = probs.shape
    if num_classes == 2:
        n1 = jnp.floor(prior[1].astype(jnp.float32) * batch + 0.5)
        order = jnp.argsort(probs[:, 0], stable=True)
        rank = jnp.zeros(batch, jnp.int32).at[order].set(
            jnp.arange(batch, dtype=jnp.int32))
        hard = (rank < n1).astype(jnp.int32)
    else:
        # Clipped logs: an underflowed probability must not produce
        # -inf - (-inf) = nan; a zero prior still excludes its class.
        tiny = jnp.finfo(jnp.float32).tiny
        log_p = jnp.log(jnp.maximum(probs, tiny))
        log_mean = jnp.log(jnp.maximum(jnp.mean(probs, axis=0), tiny))
        scores = log_p - log_mean + jnp.log(prior.astype(jnp.float32))
        hard = jnp.argmax(scores, axis=-1)
    return jax.nn.one_hot(hard, num_classes, dtype=jnp.float32)


def _xent_per_example(*, logits, targets, stats, progress, params):
    del stats, progress, params  # plain CE needs none of them
    return soft_cross_entropy(logits, targets)


def _logconf_settings(params) -> tuple[float, float, str]:
    schedule = params.get("schedule", DEFAULT_SCHEDULE)
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"unknown alpha schedule {schedule!r}; choose one of: "
                         f"{', '.join(sorted(ALPHA_SCHEDULES))}")
    warmup = params.get("warmup_frac", DEFAULT_WARMUP_FRAC[schedule])
    return params.get("alpha_max", DEFAULT_ALPHA_MAX), warmup, schedule


def _logconf_batch_targets(*, logits, targets, progress, params):
    del progress, params  # the hardening does not depend on the schedule
    probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32))
    prior = jnp.mean(targets.astype(jnp.float32), axis=0)
    return {"hardened": harden_balanced(probs, prior)}


def _logconf_per_example(*, logits, targets, stats, progress, params):
    alpha_max, warmup, schedule = _logconf_settings(params)
    a = alpha_schedule(progress, alpha_max=alpha_max, warmup_frac=warmup,
                       schedule=schedule)
    # Mixing the targets (rather than adding two CE terms) gives the same
    # value and a gradient of (1-a)(p-y) + a(p-h) in a single CE.
    hardened = jax.lax.stop_gradient(stats["hardened"])
    mixed = (1.0 - a) * targets.astype(jnp.float32) + a * hardened
    return soft_cross_entropy(logits, mixed)


def _product_per_example(*, logits, targets, stats, progress, params):
    del stats, progress  # the product target is per-example
    a = params.get("product_a", DEFAULT_PRODUCT_A)
    b = params.get("product_b", DEFAULT_PRODUCT_B)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # Normalising in log space keeps t well defined when p underflows; xlogy
    # makes y^0 = 1 even where y = 0.
    log_unnorm = b * log_probs + xlogy(a, targets.astype(jnp.float32))
    product = jax.lax.stop_gradient(jax.nn.softmax(log_unnorm, axis=-1))
    return soft_cross_entropy(logits, product)


LOSSES: dict[str, Loss] = {
    "xent": Loss("xent", _xent_per_example),
    "logconf": Loss("logconf", _logconf_per_example, _logconf_batch_targets),
    "product": Loss("product", _product_per_example),
}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: "
                         f"{', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def loss_value(loss: Loss, *, logits, targets, progress, params) -> jax.Array:
    """Mean loss of one whole batch: batch statistics and per-example terms
    computed on the same rows, as an accumulated step would over minibatches.
    """
    stats = None
    if loss.batch_targets is not None:
        stats = loss.batch_targets(logits=jax.lax.stop_gradient(logits),
                                   targets=targets, progress=progress,
                                   params=params)
    return jnp.mean(loss.per_example(logits=logits, targets=targets,
                                     stats=stats, progress=progress,
                                     params=params))
