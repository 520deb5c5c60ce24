"""Finetune one classifier: init, sharded jitted train step, predict loop."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from w2s_jax import losses, sharding
from w2s_jax.data import batching
from w2s_jax.models import classifier, registry, tokenizers
from w2s_jax.progress import Progress, log


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
                     linear_probe: bool, head_init: str,
                     pooling: str = "last") -> classifier.Classifier:
    # 'unembedding' starts from zeros and is overwritten in init_params.
    module_head_init = "zeros" if head_init == "unembedding" else head_init
    return classifier.Classifier(
        backbone=registry.backbone(model), num_classes=num_classes,
        linear_probe=linear_probe, head_init=module_head_init, pooling=pooling)


def init_params(module: classifier.Classifier, model: registry.ResolvedModel, *,
                head_init: str, seed: int, mesh) -> Any:
    """Pretrained weights (or a random init) placed replicated on the mesh."""
    dummy = jnp.zeros((1, 8), jnp.int32)

    def init_fn(key):
        return module.init(key, dummy, jnp.ones_like(dummy))["params"]

    key = jax.random.key(seed)
    replicated = sharding.replicated(mesh)
    if model.checkpoint_dir is None:
        params = jax.jit(init_fn, out_shardings=replicated)(key)
        params = jax.tree.map(np.asarray, params)
    else:
        # Only shapes: the backbone is never materialised twice.
        abstract = jax.eval_shape(init_fn, key)
        backbone = registry.pretrained_backbone_params(model, abstract["backbone"])
        shape = abstract["head"]["kernel"].shape
        head = (np.zeros(shape, np.float32) if head_init != "normal" else
                0.02 * np.asarray(jax.random.normal(key, shape), np.float32))
        params = {"backbone": backbone, "head": {"kernel": head}}
    if head_init == "unembedding":
        ids = tokenizers.label_token_ids(model.tokenizer, module.num_classes)
        wte = registry.embedding_table(model, params["backbone"])
        params["head"]["kernel"] = classifier.head_from_unembedding(wte, ids)
    return jax.device_put(params, replicated)


def make_optimizer(settings: TrainSettings, total_steps: int):
    """Adam (AdamW if weight decay) with warmup + cosine decay to 0."""
    def schedule(peak):
        if settings.lr_schedule == "constant":
            return optax.constant_schedule(peak)
        if not settings.warmup_steps:
            return optax.cosine_decay_schedule(peak, decay_steps=total_steps)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=settings.warmup_steps,
            decay_steps=max(total_steps, settings.warmup_steps + 1),
            end_value=0.0)

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
    """forward(params, (input_ids, attention_mask)) -> logits, for a Classifier."""
    def forward(params, inputs):
        return module.apply({"params": params}, *inputs)
    return forward


def make_train_step(forward: Callable, tx, loss: losses.Loss,
                    loss_params: dict, total_steps: int, mesh) -> Callable:
    """A jitted step on a batch {"inputs", "targets"} shaped [micro, minibatch, ...].

    `forward(params, inputs) -> logits` is the model: a transformer
    classifier on token ids, or a linear head on frozen features. Gradients
    are accumulated over the micro axis, but a loss with batch statistics
    (the confidence loss) computes them over the WHOLE batch: a no-grad
    forward pass over all minibatches gives the batch's logits first.
    Without dropout that pass sees exactly the logits the gradient pass sees.
    """
    def step(state, batch):
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

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (value, grads), _ = jax.lax.scan(accumulate, zeros,
                                         (inputs, targets, stats))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {"params": optax.apply_updates(params, updates),
                     "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": value}

    batch_sharding = sharding.batch_sharding(mesh, batch_dim=1)
    replicated = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, batch_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def make_predict_step(forward: Callable, mesh) -> Callable:
    def predict_probs(params, inputs):
        return jax.nn.softmax(forward(params, inputs).astype(jnp.float32), axis=-1)

    return jax.jit(predict_probs, in_shardings=(sharding.replicated(mesh),
                                                sharding.batch_sharding(mesh, 0)),
                   out_shardings=sharding.replicated(mesh))


def token_inputs(ids: list[np.ndarray], *, pad_id: int, max_ctx: int):
    """make_inputs(indices, rows) -> (input_ids, attention_mask), right-padded."""
    def make_inputs(indices, rows):
        return batching.pad(ids, indices, rows=rows, max_ctx=max_ctx,
                            pad_id=pad_id)
    return make_inputs


def predict(predict_step, params, *, make_inputs, lengths: np.ndarray,
            batch_size: int, mesh, num_classes: int) -> np.ndarray:
    """Class probabilities [N, K] in the original example order."""
    probs = np.zeros((len(lengths), num_classes), np.float32)
    for indices in batching.eval_batches(lengths, batch_size=batch_size):
        inputs = sharding.to_global(mesh, make_inputs(indices, batch_size))
        out = np.asarray(predict_step(params, inputs))
        probs[indices] = out[:len(indices)]
    return probs


def finetune(*, name: str, forward: Callable, params, make_inputs,
             lengths: np.ndarray, train_targets: np.ndarray,
             settings: TrainSettings, loss: losses.Loss, loss_params: dict,
             mesh, seed: int) -> tuple[Any, dict]:
    """Train on (inputs, soft targets); returns the final params and a record.

    `make_inputs(indices, rows)` builds the numpy inputs of a batch;
    `lengths` (tokens per example) groups similar lengths into batches.
    """
    n_examples = len(lengths)
    steps_per_epoch = n_examples // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"[{name}] {n_examples} training examples are "
                         f"fewer than one batch of {settings.batch_size}")
    total_steps = steps_per_epoch * settings.epochs
    n_micro = settings.batch_size // settings.minibatch_size
    tx = make_optimizer(settings, total_steps)
    state = {"params": params, "opt_state": jax.jit(tx.init)(params),
             "step": jnp.zeros((), jnp.int32)}
    step_fn = make_train_step(forward, tx, loss, loss_params, total_steps, mesh)
    progress = Progress(name, total_steps, settings.batch_size)
    log(f"[{name}] {n_examples} examples, {settings.epochs} epochs, "
        f"{total_steps} steps of {settings.batch_size} "
        f"({n_micro} x {settings.minibatch_size}), lr {settings.lr:g}, "
        f"loss {loss.name}")

    def micro_split(x):
        return x.reshape(n_micro, settings.minibatch_size, *x.shape[1:])

    losses_seen, waste, pending, step = [], [], None, 0
    for epoch in range(settings.epochs):
        rng = np.random.default_rng([seed, epoch])
        batches = batching.train_batches(lengths, batch_size=settings.batch_size,
                                         rng=rng)
        waste.append(batching.padding_waste(lengths, batches, settings.max_ctx))
        for indices in batches:
            batch = {"inputs": jax.tree.map(micro_split,
                                            make_inputs(indices, len(indices))),
                     "targets": micro_split(train_targets[indices])}
            state, metrics = step_fn(state, sharding.to_global(mesh, batch, 1))
            step += 1
            # Read the previous step's loss only now, so the host never
            # waits on the device between dispatches.
            if pending is not None:
                _record(pending, losses_seen, progress, settings.log_every,
                        total_steps)
            pending = (step, metrics)
    _record(pending, losses_seen, progress, settings.log_every, total_steps)
    record = {"steps": total_steps, "examples": n_examples,
              "final_loss": losses_seen[-1], "train_seconds": progress.elapsed(),
              "padding_waste": float(np.mean(waste)),
              "loss_curve": losses_seen}
    return state["params"], record


def _record(pending, losses_seen, progress, log_every, total_steps):
    step, metrics = pending
    value = float(metrics["loss"])
    if not np.isfinite(value):
        raise FloatingPointError(f"[{progress.name}] non-finite loss {value} "
                                 f"at step {step}")
    losses_seen.append(value)
    if step == 1 or step % log_every == 0 or step == total_steps:
        progress.update(step, value)
