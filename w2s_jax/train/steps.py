"""Model init, optimizer, and the sharded jitted train and predict steps.

Parameters and optimizer state are created sharded by the logical axis rules
of sharding.py (never built whole on one device); the steps take the
parameters' shardings, with replicated parameters as the default.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from w2s_jax.core import sharding
from w2s_jax.core.errors import UsageError
from w2s_jax.train import losses
from w2s_jax.models import classifier, registry, tokenizers

# Backbone compute dtypes. Parameters, optimizer state, pooling, head,
# logits and losses stay float32 whichever is chosen.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    lr: float
    head_lr: float | None
    batch_size: int
    minibatch_size: int
    epochs: int
    lr_schedule: str
    warmup_steps: int
    weight_decay: float
    eval_batch_size: int
    max_ctx: int
    log_every: int


def build_classifier(model: registry.ResolvedModel, *, num_classes: int,
                     linear_probe: bool, head_init: str, pooling: str = "last",
                     compute_dtype: str = "float32",
                     remat: str = "none") -> classifier.Classifier:
    """`compute_dtype`: a COMPUTE_DTYPES name for the backbone; `remat`: a
    sharding.REMAT_POLICIES name, applied to every transformer block."""
    # 'unembedding' starts from zeros and is overwritten in init_params.
    module_head_init = "zeros" if head_init == "unembedding" else head_init
    return classifier.Classifier(
        backbone=_backbone(model, compute_dtype, remat),
        num_classes=num_classes, linear_probe=linear_probe,
        head_init=module_head_init, pooling=pooling)


def build_choice_scorer(model: registry.ResolvedModel, *, candidates: int,
                        linear_probe: bool, head_init: str, pooling: str,
                        compute_dtype: str = "float32", remat: str = "none",
                        pairs: bool = False) -> classifier.ChoiceScorer:
    """A scorer of each example's candidates (classifier.ChoiceScorer):
    mode "choice" scores a tied decoder's candidates by its LM head and any
    other model's by a scalar head; mode "reward" (`pairs`) is the
    PairScorer, a scalar head over the two completions of a preference pair.
    Other arguments as for build_classifier."""
    backbone = _backbone(model, compute_dtype, remat)
    if pairs:
        return classifier.PairScorer(backbone=backbone, linear_probe=linear_probe,
                                     head_init=head_init, pooling=pooling)
    path = (registry.FAMILIES[model.family].embedding_path
            if choice_by_lm(model) else ())
    if path and linear_probe:
        raise UsageError(LM_PROBE_ERROR.format(name=model.name))
    return classifier.ChoiceScorer(
        backbone=backbone, candidates=candidates, embedding_path=path,
        linear_probe=linear_probe, head_init=head_init, pooling=pooling)


LM_PROBE_ERROR = ("mode 'choice' scores decoder {name!r}'s candidates by its LM "
             "head, the backbone itself: linear_probe=True would freeze all "
             "of it; set linear_probe=False")


def choice_by_lm(model: registry.ResolvedModel) -> bool:
    """Mode "choice" scores by the LM head where the model has one loaded:
    a decoder whose head is its (tied) embedding table."""
    return (model.family in registry.DECODER_FAMILIES and
            getattr(model.backbone_config, "tie_word_embeddings", True))


def _backbone(model: registry.ResolvedModel, compute_dtype: str, remat: str):
    """The family's backbone module, its dtype and remat policy checked."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={compute_dtype!r} is not valid; "
                         f"choose one of: {', '.join(COMPUTE_DTYPES)}")
    if remat not in sharding.REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is not valid; choose one of: "
                         f"{', '.join(sharding.REMAT_POLICIES)}")
    return registry.backbone(model, dtype=COMPUTE_DTYPES[compute_dtype],
                             remat=remat)


def init_sharded(init_fn: Callable, key, mesh, rules=sharding.RULES) -> Any:
    """Random params = init_fn(key), created directly in their shardings."""
    _, shardings = sharding.param_shardings(init_fn, key, mesh=mesh, rules=rules)
    return jax.jit(init_fn, out_shardings=shardings)(key)


def init_params(module: classifier.Classifier,
                model: registry.ResolvedModel, *,
                head_init: str, seed: int, mesh, rules=sharding.RULES,
                backbone_params=None) -> Any:
    """Pretrained weights (or a random init), sharded by the logical rules.

    Shapes and shardings come from tracing the init only; a random init is
    then jitted straight into its shardings, and pretrained numpy weights are
    device_put into them, so no device ever holds the whole unsharded model.
    `backbone_params` (numpy, shaped like the backbone) replace the
    checkpoint's: e.g. the weights of a generative finetune.
    """
    dummy = jnp.zeros((1, *module.example_shape), jnp.int32)

    def init_fn(key):
        return module.init(key, dummy, jnp.ones_like(dummy))["params"]

    key = jax.random.key(seed)
    abstract, shardings = sharding.param_shardings(init_fn, key, mesh=mesh,
                                                   rules=rules)
    if model.checkpoint_dir is None and backbone_params is None:
        params = jax.jit(init_fn, out_shardings=shardings)(key)
    else:
        backbone = (registry.pretrained_backbone_params(model, abstract["backbone"])
                    if backbone_params is None else
                    _checked(backbone_params, abstract["backbone"]))
        params = {"backbone": backbone}
        if "head" in abstract:  # an LM-scored ChoiceScorer has none
            shape = abstract["head"]["kernel"].shape
            params["head"] = {"kernel": (
                np.zeros(shape, np.float32) if head_init != "normal" else
                0.02 * np.asarray(jax.random.normal(key, shape), np.float32))}
    if head_init == "unembedding":
        ids = tokenizers.label_token_ids(model.tokenizer, module.num_classes)
        wte = registry.embedding_table(model, params["backbone"])
        params["head"]["kernel"] = classifier.head_from_unembedding(wte, ids)
    return jax.device_put(params, shardings)


def _checked(params, abstract):
    """`params` if their tree and shapes are the module's."""
    if jax.tree.structure(params) != jax.tree.structure(abstract) or any(
            np.shape(p) != a.shape for p, a in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(abstract))):
        raise ValueError("replacement backbone parameters do not match the "
                         "model's parameter tree or shapes")
    return params


def init_state(tx, params, mesh) -> dict:
    """The train state {"params", "opt_state", "step"}, all on the mesh.

    The optimizer state is created sharded like `params` (Adam's moments
    take their parameter's sharding; counts are replicated), and the step
    is replicated too, so the train step's second call finds the layout of
    its first and does not compile again.
    """
    replicated = sharding.replicated(mesh)
    opt_shardings = sharding.like_params(
        jax.eval_shape(tx.init, params), params, sharding.shardings_of(params),
        default=replicated)
    return {"params": params,
            "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
            "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}


def lr_schedule(settings: TrainSettings, total_steps: int, peak: float):
    """The learning rate by step: warmup + cosine decay to 0, or constant."""
    if settings.lr_schedule == "constant":
        return optax.constant_schedule(peak)
    if not settings.warmup_steps:
        return optax.cosine_decay_schedule(peak, decay_steps=total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=settings.warmup_steps,
        decay_steps=max(total_steps, settings.warmup_steps + 1),
        end_value=0.0)


def make_optimizer(settings: TrainSettings, total_steps: int):
    """Adam (AdamW if weight decay) with `lr_schedule`."""
    def schedule(peak):
        return lr_schedule(settings, total_steps, peak)

    def adam(peak):
        if settings.weight_decay:
            return optax.adamw(schedule(peak), weight_decay=settings.weight_decay)
        return optax.adam(schedule(peak))

    if settings.head_lr is None:
        return adam(settings.lr)
    return optax.multi_transform(
        {"head": adam(settings.head_lr), "backbone": adam(settings.lr)},
        lambda params: {k: jax.tree.map(lambda _: k if k == "head" else
                                        "backbone", v)
                        for k, v in params.items()})


def module_forward(module) -> Callable:
    """forward(params, (input_ids, attention_mask)) -> logits, for a
    Classifier or a ChoiceScorer."""
    def forward(params, inputs):
        return module.apply({"params": params}, *inputs)
    return forward


def make_train_step(forward: Callable, tx, loss: losses.Loss,
                    loss_params: dict, total_steps: int, mesh,
                    param_shardings=None, rules=sharding.RULES) -> Callable:
    """A jitted step on a batch {"inputs", "targets"} shaped [micro, minibatch, ...].

    `param_shardings` (a tree like the params; None = replicated) are kept
    by the step; the optimizer state comes out sharded like its parameters
    (as init_state makes it), gradients accumulate sharded the same way,
    and the model's activations follow `rules`. The state is donated.

    `forward(params, inputs) -> logits` is the model: a transformer
    classifier on token ids, or a linear head on frozen features. Gradients
    are accumulated over the micro axis, but a loss with batch statistics
    (the confidence loss) computes them over the WHOLE batch: a no-grad
    forward pass over all minibatches gives the batch's logits first.
    Without dropout that pass sees exactly the logits the gradient pass sees.
    """
    replicated = sharding.replicated(mesh)
    param_shardings = replicated if param_shardings is None else param_shardings
    sharding.check_rules(rules, mesh)

    def step(state, batch):
        with sharding.activation_rules(mesh, rules):
            return sharded_step(state, batch)

    def sharded_step(state, batch):
        params = state["params"]
        progress = state["step"].astype(jnp.float32) / total_steps
        inputs, targets = batch["inputs"], batch["targets"]
        n_micro, micro = targets.shape[:2]
        total = n_micro * micro

        stats = None
        if loss.batch_targets is not None and n_micro > 1:
            logits = jax.lax.map(lambda x: forward(params, x), inputs)
            stats = loss.batch_targets(
                logits=jax.lax.stop_gradient(logits.reshape(total, -1)),
                targets=targets.reshape(total, -1), progress=progress,
                params=loss_params)
            stats = jax.tree.map(
                lambda s: s.reshape(n_micro, micro, *s.shape[1:]), stats)

        def micro_loss(p, micro_inputs, micro_targets, micro_stats):
            logits = forward(p, micro_inputs)
            if micro_stats is None and loss.batch_targets is not None:
                micro_stats = loss.batch_targets(
                    logits=jax.lax.stop_gradient(logits), targets=micro_targets,
                    progress=progress, params=loss_params)
            per_example = loss.per_example(
                logits=logits, targets=micro_targets, stats=micro_stats,
                progress=progress, params=loss_params)
            return per_example.sum() / total

        grad_fn = jax.value_and_grad(micro_loss)

        def accumulate(carry, xs):
            loss_sum, grad_sum = carry
            value, grads = grad_fn(params, *xs)
            return (loss_sum + value, jax.tree.map(jnp.add, grad_sum, grads)), None

        grad_zeros = jax.lax.with_sharding_constraint(
            jax.tree.map(jnp.zeros_like, params), param_shardings)
        (value, grads), _ = jax.lax.scan(
            accumulate, (jnp.zeros((), jnp.float32), grad_zeros),
            (inputs, targets, stats))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        opt_state = jax.lax.with_sharding_constraint(opt_state, sharding.like_params(
            opt_state, params, param_shardings, default=replicated))
        new_state = {"params": optax.apply_updates(params, updates),
                     "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": value}

    # The optimizer state's shardings are left to the arguments (None): its
    # tree is only known once tx.init has run; inside, it is pinned to
    # like_params, so every step sees the same layout.
    state_shardings = {"params": param_shardings, "opt_state": None,
                       "step": replicated}
    return jax.jit(step, in_shardings=(state_shardings,
                                       sharding.batch_sharding(mesh, batch_dim=1)),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_predict_step(forward: Callable, mesh, param_shardings=None,
                      rules=sharding.RULES) -> Callable:
    """Jitted class probabilities; `param_shardings` None = replicated."""
    sharding.check_rules(rules, mesh)

    def predict_probs(params, inputs):
        with sharding.activation_rules(mesh, rules):
            logits = forward(params, inputs)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    if param_shardings is None:
        param_shardings = sharding.replicated(mesh)
    return jax.jit(predict_probs, in_shardings=(param_shardings,
                                                sharding.batch_sharding(mesh, 0)),
                   out_shardings=sharding.replicated(mesh))
