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

``params`` is a plain dict of hyper-parameters. It is read in Python (the
schedule name picks code), so it must be static under ``jax.jit`` (close over
it), while ``progress`` may be traced. All arithmetic is float32 whatever the
logits' dtype.

Each loss declares its own hyper-parameters (``Loss.params``: name, type,
default, valid values); nothing outside this module special-cases a loss by
name. A run goes config -> ``user_params`` (the set values owned by the loss,
validated) -> ``resolve_params`` (the complete dict the loss trains with:
user values, then defaults, then defaults derived from other parameters or
from the stage's training targets). The resolved dict is plain floats and
strings, JSON-serialisable, and keys cached stages. ``per_example`` ignores
keys it does not own and fills its missing ones the same way, except the
data-derived ones (window's radius), which need ``resolve_params``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
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
class Param:
    """One hyper-parameter of a loss.

    ``default`` is either a value or a function ``(resolved, train_targets)
    -> value`` for a default that depends on parameters declared before it
    (``resolved`` holds them) or on the stage's training targets [N, K]
    (None when not available). Floats are checked against the inclusive
    bounds ``low``/``high`` (None = unbounded), strings against ``choices``.
    """
    name: str
    type: type  # float or str
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Loss:
    name: str
    per_example: Callable[..., jax.Array]
    # None when the loss needs no whole-batch statistics.
    batch_targets: Callable[..., Any] | None = None
    # Hyper-parameters, in resolution order (a derived default may read the
    # ones before it).
    params: tuple[Param, ...] = ()

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


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

    K > 2: per-class quotas, the prior times B rounded by largest remainder
    (ties to the lower class) so they sum to B; then (row, class) pairs are
    taken in decreasing p, stably, each row getting the first class it
    meets that still has room. Every row is placed (a class with room left
    at the end would have taken any row that reached it), the counts equal
    the quotas exactly, and the most confident rows of each class keep
    their class. For K = 2 this is the count rule above; that closed form
    is kept for its documented tie-breaking.
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
        hard = _assign_by_quota(probs, class_quotas(prior, batch))
    return jax.nn.one_hot(hard, num_classes, dtype=jnp.float32)


def class_quotas(prior: jax.Array, batch: int) -> jax.Array:
    """Integer counts [K] summing to `batch`, proportional to `prior`:
    floor(prior * B), plus one for the classes with the largest remainders
    (ties to the lower class index)."""
    raw = prior.astype(jnp.float32) / jnp.sum(prior) * batch
    base = jnp.floor(raw)
    short = batch - jnp.sum(base)
    order = jnp.argsort(-(raw - base), stable=True)
    extra = jnp.zeros_like(base).at[order].set(
        (jnp.arange(raw.shape[0]) < short).astype(base.dtype))
    return (base + extra).astype(jnp.int32)


def _assign_by_quota(probs: jax.Array, quotas: jax.Array) -> jax.Array:
    """Class [B] of each row: greedy over (row, class) pairs by decreasing
    probability, within `quotas` (see harden_balanced)."""
    batch, num_classes = probs.shape
    order = jnp.argsort(-probs.reshape(-1), stable=True)

    def place(carry, pair):
        assigned, counts = carry
        row, cls = pair // num_classes, pair % num_classes
        take = (assigned[row] < 0) & (counts[cls] < quotas[cls])
        assigned = assigned.at[row].set(jnp.where(take, cls, assigned[row]))
        counts = counts.at[cls].add(take.astype(jnp.int32))
        return (assigned, counts), None

    start = (jnp.full(batch, -1, jnp.int32), jnp.zeros(num_classes, jnp.int32))
    (assigned, _), _ = jax.lax.scan(place, start, order)
    return assigned


def _xent_per_example(*, logits, targets, stats, progress, params):
    del stats, progress, params  # plain CE needs none of them
    return soft_cross_entropy(logits, targets)


def _kl_per_example(*, logits, targets, stats, progress, params):
    """KL(y || p) = sum_c y_c (log y_c - log p_c), with 0 log 0 = 0.

    CE minus the (constant) entropy of y: the gradient is xent's.
    """
    del stats, progress, params
    targets = targets.astype(jnp.float32)
    return jnp.sum(xlogy(targets, targets), axis=-1) + soft_cross_entropy(
        logits, targets)


def _logconf_batch_targets(*, logits, targets, progress, params):
    del progress, params  # the hardening does not depend on the schedule
    probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32))
    prior = jnp.mean(targets.astype(jnp.float32), axis=0)
    return {"hardened": harden_balanced(probs, prior)}


def _alpha(progress, params, loss_name: str) -> jax.Array:
    settings = _own_params(loss_name, params)
    return alpha_schedule(progress, alpha_max=settings["alpha_max"],
                          warmup_frac=settings["warmup_frac"],
                          schedule=settings["schedule"])


def _logconf_per_example(*, logits, targets, stats, progress, params):
    a = _alpha(progress, params, "logconf")
    # Mixing the targets (rather than adding two CE terms) gives the same
    # value and a gradient of (1-a)(p-y) + a(p-h) in a single CE.
    hardened = jax.lax.stop_gradient(stats["hardened"])
    mixed = (1.0 - a) * targets.astype(jnp.float32) + a * hardened
    return soft_cross_entropy(logits, mixed)


def _entropy_per_example(*, logits, targets, stats, progress, params):
    """(1 - a) CE(z, y) + a H(p), H(p) = -sum_c p_c log p_c.

    The gradient flows through H (the follow-up stopped it, which left
    (1 - a) xent): dH/dz_k = -p_k (log p_k + H).
    """
    del stats
    a = _alpha(progress, params, "entropy")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # exp(log p) * log p is 0, not nan, where p underflows.
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return (1.0 - a) * soft_cross_entropy(logits, targets) + a * entropy


def _window_per_example(*, logits, targets, stats, progress, params):
    """CE on the examples the student is unsure of: max_c p_c < 0.5 + radius
    (the mask under stop-gradient), 0 on the others; the batch mean still
    divides by all rows."""
    del stats, progress
    radius = _own_params("window", params)["radius"]
    probs = jax.nn.softmax(
        jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
    inside = jnp.max(probs, axis=-1) < 0.5 + radius
    return jnp.where(inside, soft_cross_entropy(logits, targets), 0.0)


def _product_per_example(*, logits, targets, stats, progress, params):
    del stats, progress  # the product target is per-example
    settings = _own_params("product", params)
    a, b = settings["product_a"], settings["product_b"]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # Normalising in log space keeps t well defined when p underflows; xlogy
    # makes y^0 = 1 even where y = 0.
    log_unnorm = b * log_probs + xlogy(a, targets.astype(jnp.float32))
    product = jax.lax.stop_gradient(jax.nn.softmax(log_unnorm, axis=-1))
    return soft_cross_entropy(logits, product)


def _median_margin(resolved, train_targets):
    """Window radius default ("midweak"): the median over the stage's
    training targets of max_c q_c - 0.5, i.e. |q - 0.5| for binary labels.

    With more than two classes max_c q_c can be below 0.5; a negative median
    is clipped to 0 (radius >= 0, as for a set radius)."""
    del resolved
    if train_targets is None:
        raise ValueError(
            "loss 'window' derives loss_params.radius from the stage's "
            "training targets: set radius, or resolve the parameters with "
            "resolve_params(..., train_targets)")
    targets = np.asarray(train_targets, np.float64)
    if targets.ndim != 2 or targets.shape[0] == 0:
        raise ValueError(f"train_targets must be a non-empty [N, K] array, "
                         f"got shape {targets.shape}")
    return max(0.0, float(np.median(targets.max(axis=-1) - 0.5)))


# The confidence weight's schedule, shared by logconf and entropy. The warmup
# default comes with the schedule: the paper's 0.2 for "linear", the
# release's 0.1 for "release_jump".
_ALPHA_PARAMS = (
    Param("alpha_max", float, DEFAULT_ALPHA_MAX,
          "final weight a of the confidence/entropy term", low=0.0, high=1.0),
    Param("schedule", str, DEFAULT_SCHEDULE, "warmup shape of a",
          choices=ALPHA_SCHEDULES),
    Param("warmup_frac", float,
          lambda resolved, _: DEFAULT_WARMUP_FRAC[resolved["schedule"]],
          "fraction of training over which a warms up", low=0.0, high=1.0),
)

LOSSES: dict[str, Loss] = {
    "xent": Loss("xent", _xent_per_example),
    "kl": Loss("kl", _kl_per_example),
    "logconf": Loss("logconf", _logconf_per_example, _logconf_batch_targets,
                    params=_ALPHA_PARAMS),
    "entropy": Loss("entropy", _entropy_per_example, params=_ALPHA_PARAMS),
    "window": Loss("window", _window_per_example, params=(
        Param("radius", float, _median_margin,
              "train on rows with max_c p_c < 0.5 + radius", low=0.0),)),
    "product": Loss("product", _product_per_example, params=(
        Param("product_a", float, DEFAULT_PRODUCT_A, "exponent of y", low=0.0),
        Param("product_b", float, DEFAULT_PRODUCT_B, "exponent of p", low=0.0),
    )),
}


# ---- parameters ---------------------------------------------------------------

def param_fields() -> dict[str, type]:
    """Every loss parameter's name -> python type, over all losses (sorted).

    For the config schema: ``config.loss_params`` has all of these, None
    meaning "the loss's default".
    """
    fields: dict[str, type] = {}
    for loss in LOSSES.values():
        for param in loss.params:
            if fields.setdefault(param.name, param.type) is not param.type:
                raise TypeError(f"loss parameter {param.name!r} is declared "
                                f"with two types")
    return dict(sorted(fields.items()))


def _valid_keys(names: Iterable[str]) -> str:
    """Each loss's keys, e.g. 'xent: (none); logconf: alpha_max, ...'."""
    return "; ".join(
        f"{name}: {', '.join(sorted(get_loss(name).param_names)) or '(none)'}"
        for name in names)


def _check_value(param: Param, value, field: str):
    """``value`` as the plain python type of ``param``, or ValueError naming
    the field, the value and the valid range or choices."""
    if param.type is str:
        if not isinstance(value, str) or (param.choices
                                          and value not in param.choices):
            raise ValueError(f"{field}={value!r} is not valid; choose one of: "
                             f"{', '.join(param.choices)}")
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{field}={value!r} is not a number")
    number = float(value)
    low = -math.inf if param.low is None else param.low
    high = math.inf if param.high is None else param.high
    if not (math.isfinite(number) and low <= number <= high):
        bounds = (f"{param.low:g} <= {param.name} <= {param.high:g}"
                  if param.low is not None and param.high is not None else
                  f"{param.name} >= {param.low:g}" if param.low is not None else
                  f"{param.name} <= {param.high:g}" if param.high is not None else
                  "a finite number")
        raise ValueError(f"{field}={value!r} is out of range; valid: {bounds}")
    return number


def user_params(loss_name: str, loss_params: Mapping[str, Any],
                run_losses: Iterable[str]) -> dict:
    """The set (not None) entries of a config's ``loss_params`` that belong
    to ``loss_name``, validated and as plain floats/strings.

    ``run_losses`` are all losses of the run (``loss_name`` counts as one):
    a set key that none of them owns is a mistake, and so is a value out of
    its range; both raise ValueError naming the field and what is valid.
    """
    run = list(dict.fromkeys([*run_losses, loss_name]))
    owned = {name: get_loss(name).param_names for name in run}
    given = {k: v for k, v in dict(loss_params.items()).items() if v is not None}
    out = {}
    for key, value in sorted(given.items()):
        owners = [name for name in run if key in owned[name]]
        if not owners:
            others = sorted(n for n, loss in LOSSES.items()
                            if key in loss.param_names)
            hint = (f" ({key} is a parameter of: {', '.join(others)})"
                    if others else "")
            which = ("loss" if len(run) == 1 else "losses")
            raise ValueError(
                f"config.loss_params.{key} is not a parameter of {which} "
                f"{', '.join(map(repr, run))}; valid keys: {_valid_keys(run)}"
                f"{hint}")
        for name in owners:
            param = get_loss(name).params[owned[name].index(key)]
            value = _check_value(param, value, f"config.loss_params.{key}")
        if key in owned[loss_name]:
            out[key] = value
    return out


def resolve_params(loss_name: str, user: Mapping[str, Any],
                   train_targets: np.ndarray | None = None) -> dict:
    """The complete parameter dict ``loss_name`` trains with: ``user``'s
    values (all must be the loss's own), then the declared defaults, then
    the derived ones (a schedule's warmup, window's radius from the stage's
    training targets [N, K]). Plain floats and strings, JSON-serialisable;
    {} for a loss without parameters.

    E.g. logconf with no user values gives {"alpha_max": 0.5, "schedule":
    "linear", "warmup_frac": 0.2}; with schedule="release_jump",
    warmup_frac resolves to 0.1.
    """
    loss = get_loss(loss_name)
    unknown = sorted(set(user) - set(loss.param_names))
    if unknown:
        raise ValueError(f"loss_params.{unknown[0]} is not a parameter of loss "
                         f"{loss_name!r}; valid keys: {_valid_keys([loss_name])}")
    resolved: dict[str, Any] = {}
    for param in loss.params:
        field = f"loss_params.{param.name}"
        if user.get(param.name) is not None:
            resolved[param.name] = _check_value(param, user[param.name], field)
        elif callable(param.default):
            resolved[param.name] = _check_value(
                param, param.default(dict(resolved), train_targets), field)
        else:
            resolved[param.name] = _check_value(param, param.default, field)
    return resolved


def _own_params(loss_name: str, params: Mapping[str, Any]) -> dict:
    """Inside a loss: its own entries of ``params`` (others are ignored),
    with the defaults that need no data filled in."""
    names = get_loss(loss_name).param_names
    return resolve_params(loss_name, {k: v for k, v in params.items()
                                      if k in names})


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
