"""Model init, optimizer, and the sharded jitted train and predict steps.

Parameters and optimizer state are created sharded by the logical axis rules
of sharding.py (never built whole on one device); the steps take the
parameters' shardings, with replicated parameters as the default.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import flax
import optax

from w2s_jax.core import sharding
from w2s_jax.core.errors import UsageError
from w2s_jax.train import losses
from w2s_jax.models import (classifier, layers, lora, registry, tokenizers,
                            vocabulary)

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
    # Shorter batches in minibatches of more rows, up to the tokens of
    # minibatch_size rows at the longest length (loop.minibatch_rows).
    minibatch_by_tokens: bool = True
    # Random batches, several examples to a row (data/packing.py); off,
    # batches grouped by length, one example per row.
    pack: bool = False

    def key_fields(self) -> dict:
        """The settings that key a stage (core/stages.py). Not log_every,
        which changes only what is printed; minibatch_by_tokens only when
        off, so stages keep the keys they had before it existed: the split
        changes rounding only (the loss is the whole batch's either way,
        tests/test_train.py); pack only when on, since its random batches
        are other batches than the length-grouped ones of stages before."""
        fields = dataclasses.asdict(self)
        del fields["log_every"]
        if fields["minibatch_by_tokens"]:
            del fields["minibatch_by_tokens"]
        if not fields["pack"]:
            del fields["pack"]
        return fields


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
                backbone_params=None, lora_spec: lora.LoraSpec | None = None) -> Any:
    """Pretrained weights (or a random init), sharded by the logical rules.

    Shapes and shardings come from tracing the init only; a random init is
    then jitted straight into its shardings, and pretrained numpy weights are
    device_put into them, so no device ever holds the whole unsharded model.
    `backbone_params` (numpy, shaped like the backbone) replace the
    checkpoint's: e.g. the weights of a generative finetune. With
    `lora_spec` the targeted projections carry new adapters (models/lora.py),
    which no checkpoint holds: they start as LoRA starts them.
    """
    dummy = jnp.zeros((1, *module.example_shape), jnp.int32)

    def init_fn(key):
        with lora.scope(lora_spec):
            return module.init(key, dummy, jnp.ones_like(dummy))["params"]

    key = jax.random.key(seed)
    abstract, shardings = sharding.param_shardings(init_fn, key, mesh=mesh,
                                                   rules=rules)
    base, adapters = _split_adapters(abstract["backbone"])
    if lora_spec is not None and not adapters:
        raise UsageError(
            f"LoRA targets {', '.join(lora_spec.targets)} match no layer of "
            f"{model.name!r}; its family's attention and MLP projections are "
            f"{', '.join(lora.DEFAULT_TARGETS[model.family])}")
    if model.checkpoint_dir is None and backbone_params is None:
        params = jax.jit(init_fn, out_shardings=shardings)(key)
    else:
        backbone = (registry.pretrained_backbone_params(model, base)
                    if backbone_params is None else
                    _checked(backbone_params, base))
        if adapters:
            backbone = _with_new_adapters(backbone, adapters, key)
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


def _split_adapters(abstract):
    """(the tree without LoRA adapters, {path: adapter leaf})."""
    flat = flax.traverse_util.flatten_dict(abstract)
    base = {k: v for k, v in flat.items() if not lora.is_adapter(k)}
    return (flax.traverse_util.unflatten_dict(base),
            {k: v for k, v in flat.items() if lora.is_adapter(k)})


def _with_new_adapters(backbone, adapters: dict, key):
    """`backbone` (numpy) plus freshly started adapters: A as
    layers.LoraDense initialises it, B zero."""
    flat = flax.traverse_util.flatten_dict(backbone)
    for i, (path, leaf) in enumerate(sorted(adapters.items())):
        flat[path] = (np.zeros(leaf.shape, np.float32) if path[-1] == "lora_b"
                      else np.asarray(layers._lora_a_init(
                          jax.random.fold_in(key, i), leaf.shape)))
    return flax.traverse_util.unflatten_dict(flat)


def _checked(params, abstract):
    """`params` if their tree and shapes are the module's."""
    if jax.tree.structure(params) != jax.tree.structure(abstract) or any(
            np.shape(p) != a.shape for p, a in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(abstract))):
        raise ValueError("replacement backbone parameters do not match the "
                         "model's parameter tree or shapes")
    return params


def init_state(tx, params, mesh, trainable=None, *, total_steps: int) -> dict:
    """The train state {"params", "opt_state", "step", "total_steps"}, all
    on the mesh; with `trainable` (split_trainable), "params" holds the
    trainable part and "frozen" the rest (take it out: make_train_step
    takes it as its own argument), which has no optimizer state and never
    changes.

    The optimizer state is created sharded like `params` (Adam's moments
    take their parameter's sharding; counts are replicated), and the step
    is replicated too, so the train step's second call finds the layout of
    its first and does not compile again. The stage's length,
    `total_steps`, is state too, not a constant of the compiled step (see
    make_optimizer).
    """
    replicated = sharding.replicated(mesh)
    params, frozen = split_trainable(params, trainable)
    opt_shardings = sharding.like_params(
        jax.eval_shape(tx.init, params), params, sharding.shardings_of(params),
        default=replicated)
    state = {"params": params,
             "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
             "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
             "total_steps": jax.device_put(jnp.asarray(total_steps, jnp.int32),
                                           replicated)}
    if frozen is not None:
        state["frozen"] = frozen
    return state


def learning_rate(settings: TrainSettings, step, total_steps, peak: float):
    """The learning rate of the update at `step` (0-based, as optax counts)
    of `total_steps`: warmup from 0 then cosine decay to 0 (optax's
    warmup_cosine_decay_schedule, or its cosine_decay_schedule without
    warmup), or constant. Written out rather than built from optax's
    schedules because `total_steps` may be traced: those take it as a
    Python int and compile it into the program."""
    if settings.lr_schedule == "constant":
        return jnp.asarray(peak, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    total = jnp.asarray(total_steps, jnp.float32)
    warmup = settings.warmup_steps
    if not warmup:
        return peak * (0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step, total)
                                          / total)))
    decay = jnp.maximum(total, warmup + 1) - warmup
    after = jnp.clip(step - warmup, 0, decay)
    cosine = peak * (0.5 * (1 + jnp.cos(jnp.pi * after / decay)))
    # optax's linear_schedule arithmetic, (init - end) * (1 - t/w) + end,
    # kept as it is so the rates round as optax's did.
    ramp = -peak * (1 - jnp.clip(step, 0, warmup) / warmup) + peak
    return jnp.where(step < warmup, ramp, cosine)


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformationExtraArgs:
    """Adam (AdamW with weight decay) at `learning_rate`'s rate, peaking
    at settings.lr (settings.head_lr for the head, if set).

    Its update takes the stage's length as an argument,
    tx.update(grads, opt_state, params, total_steps=...), which the train
    step reads from its state: so the compiled step is one program for
    stages of any length (the ceiling and each student of one model, loss
    and batch shape share it through the persistent compilation cache), and
    the optimizer state is the same tree as optax.adam's / adamw's."""
    def adam(peak):
        parts = [optax.scale_by_adam()]
        if settings.weight_decay:
            parts.append(optax.add_decayed_weights(settings.weight_decay))
        parts.append(_scale_by_learning_rate(settings, peak))
        return optax.chain(*parts)

    if settings.head_lr is None:
        return adam(settings.lr)
    return optax.multi_transform(
        {"head": adam(settings.head_lr), "backbone": adam(settings.lr)},
        lambda params: {k: jax.tree.map(lambda _: _top(k), v)
                        for k, v in params.items()})


def _scale_by_learning_rate(settings: TrainSettings, peak: float):
    """optax.scale_by_learning_rate(schedule) with the schedule's length
    an argument of the update (make_optimizer); the same state."""
    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, total_steps, **extra_args):
        del params, extra_args
        rate = learning_rate(settings, state.count, total_steps, peak)
        updates = jax.tree.map(lambda g: jnp.asarray(-rate, g.dtype) * g,
                               updates)
        return updates, optax.ScaleByScheduleState(
            count=optax.safe_increment(state.count))
    return optax.GradientTransformationExtraArgs(init, update)


def _top(key) -> str:
    """The optimizer group of a params entry: nested trees are keyed by
    "head" / "backbone", split_trainable's flat ones by whole paths."""
    first = key[0] if isinstance(key, tuple) else key
    return "head" if first == "head" else "backbone"


def module_forward(module, lora_spec: lora.LoraSpec | None = None) -> Callable:
    """forward(params, (input_ids, attention_mask)) -> logits, for a
    Classifier or a ChoiceScorer (with its LoRA adapters, if any)."""
    def forward(params, inputs):
        with lora.scope(lora_spec):
            return module.apply({"params": params}, *inputs)
    return forward


def split_trainable(params, trainable: Callable[[tuple], bool] | None):
    """(trainable, frozen) parts of `params` as flat {path: leaf} dicts, by
    `trainable(path)`; with `trainable` None, (params, None): all train."""
    if trainable is None:
        return params, None
    flat = flax.traverse_util.flatten_dict(params)
    return ({k: v for k, v in flat.items() if trainable(k)},
            {k: v for k, v in flat.items() if not trainable(k)})


def compact_embedding(params, model: registry.ResolvedModel,
                      vocab: vocabulary.Vocabulary):
    """`params` (init_params') with the backbone's token table cut to the
    vocabulary's rows (Vocabulary.table), on the devices: sharded as the
    whole table was, or with its rows whole where the mesh does not
    divide them."""
    path = ("backbone", *registry.FAMILIES[model.family].embedding_path)
    flat = flax.traverse_util.flatten_dict(params)
    table = flat[path]
    spec = list(table.sharding.spec) + [None] * (table.ndim - len(table.sharding.spec))
    row_shards = table.shape[0] // table.sharding.shard_shape(table.shape)[0]
    if vocab.size % row_shards:
        spec[0] = None
    flat[path] = jax.jit(vocab.table, out_shardings=jax.sharding.NamedSharding(
        table.sharding.mesh, jax.sharding.PartitionSpec(*spec)))(table)
    return flax.traverse_util.unflatten_dict(flat)


def cast_frozen(params, trainable: Callable[[tuple], bool], dtype):
    """`params` with every frozen leaf cast to `dtype` in place on the mesh
    (its sharding kept): LoRA's base weights in bfloat16."""
    flat = flax.traverse_util.flatten_dict(params)
    cast = jax.jit(lambda x: x.astype(dtype))
    return flax.traverse_util.unflatten_dict(
        {k: v if trainable(k) else cast(v) for k, v in flat.items()})


def join_trainable(train, frozen=None):
    """The whole params tree again (inverse of split_trainable)."""
    if frozen is None:
        return train
    return flax.traverse_util.unflatten_dict({**train, **frozen})


def make_train_step(forward: Callable, tx, loss: losses.Loss,
                    loss_params: dict, mesh,
                    param_shardings=None, rules=sharding.RULES,
                    frozen_shardings=None) -> Callable:
    """A jitted step on a batch {"inputs", "targets"} shaped [micro, minibatch, ...].

    `param_shardings` (a tree like the (trainable) params; None =
    replicated) are kept by the step; with `frozen_shardings` (the frozen
    part of init_state's split), the step is step(state, batch, frozen);
    the optimizer state comes out sharded like its parameters (as
    init_state makes it), gradients accumulate sharded the same way, and
    the model's activations follow `rules`. The state is donated. `tx` is
    make_optimizer's; the state is init_state's, whose "total_steps" sets
    the schedule and the loss's `progress`, so stages of any length run
    this one program.

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

    def step(state, batch, frozen=None):
        with sharding.activation_rules(mesh, rules):
            return sharded_step(state, batch, frozen)

    def sharded_step(state, batch, frozen):
        params = state["params"]

        def forward_all(p, x):  # gradients reach the trainable part only
            return forward(join_trainable(p, frozen), x)

        total_steps = state["total_steps"]
        progress = state["step"].astype(jnp.float32) / total_steps
        inputs, targets = batch["inputs"], batch["targets"]
        n_micro, micro = targets.shape[:2]
        total = n_micro * micro

        stats = None
        if loss.batch_targets is not None and n_micro > 1:
            logits = jax.lax.map(lambda x: forward_all(params, x), inputs)
            stats = loss.batch_targets(
                logits=jax.lax.stop_gradient(logits.reshape(total, -1)),
                targets=targets.reshape(total, -1), progress=progress,
                params=loss_params)
            stats = jax.tree.map(
                lambda s: s.reshape(n_micro, micro, *s.shape[1:]), stats)

        def micro_loss(p, micro_inputs, micro_targets, micro_stats):
            logits = forward_all(p, micro_inputs)
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
        updates, opt_state = tx.update(grads, state["opt_state"], params,
                                       total_steps=total_steps)
        opt_state = jax.lax.with_sharding_constraint(opt_state, sharding.like_params(
            opt_state, params, param_shardings, default=replicated))
        new_state = {"params": optax.apply_updates(params, updates),
                     "opt_state": opt_state, "step": state["step"] + 1,
                     "total_steps": total_steps}
        return new_state, {"loss": value}

    # The optimizer state's shardings are left to the arguments (None): its
    # tree is only known once tx.init has run; inside, it is pinned to
    # like_params, so every step sees the same layout.
    state_shardings = {"params": param_shardings, "opt_state": None,
                       "step": replicated, "total_steps": replicated}
    in_shardings = (state_shardings, sharding.batch_sharding(mesh, batch_dim=1))
    if frozen_shardings is not None:
        # The frozen part is a third argument, not donated: it outlives
        # every step unchanged (and is never checkpointed).
        return jax.jit(step, in_shardings=(*in_shardings, frozen_shardings),
                       out_shardings=(state_shardings, replicated),
                       donate_argnums=0)
    return jax.jit(lambda state, batch: step(state, batch), in_shardings=in_shardings,
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


# XLA:CPU runs a prediction batch 25-35% slower per token once the largest
# activations outgrow the last-level cache (MiniLM-L6, 64 rows of 64
# tokens: the MLP's [4096, 1536] float32, 25 MB against a 32 MiB L3;
# bench/RESULTS.md 4k). So on one CPU device the rows go through the model
# in chunks of at most this many tokens; an accelerator takes the batch
# whole.
CPU_PREDICT_TOKENS = 512


def predict_chunks(inputs, mesh) -> int:
    """How many chunks make_predict_step runs a batch's rows in: the fewest
    of at most CPU_PREDICT_TOKENS tokens (or one row) each, for token ids
    [rows, ...] (not features; a choice scorer's row is its candidates) on
    a mesh of one CPU device; 1 otherwise. A CPU mesh of several devices is
    for tests and multi-host parity, so it keeps the simpler program."""
    first = jax.tree.leaves(inputs)[0]
    if (mesh.size != 1 or mesh.devices.flat[0].platform != "cpu"
            or first.ndim < 2 or not jnp.issubdtype(first.dtype, jnp.integer)):
        return 1
    rows, per_row = first.shape[0], math.prod(first.shape[1:])
    return next(n for n in range(1, rows + 1)
                if rows % n == 0
                and (rows // n * per_row <= CPU_PREDICT_TOKENS or rows // n == 1))


def _forward_in_chunks(forward, params, inputs, chunks: int):
    """forward over `chunks` consecutive slices of the rows. Rows are
    independent (each is pooled on its own), so this is the same function
    of the batch."""
    if chunks == 1:
        return forward(params, inputs)
    rows = jax.tree.leaves(inputs)[0].shape[0]
    outputs = jax.lax.map(
        lambda part: forward(params, part),
        jax.tree.map(lambda x: x.reshape(chunks, rows // chunks,
                                         *x.shape[1:]), inputs))
    return jax.tree.map(lambda y: y.reshape(rows, *y.shape[2:]), outputs)


def make_predict_step(forward: Callable, mesh, param_shardings=None,
                      rules=sharding.RULES) -> Callable:
    """Jitted class probabilities; `param_shardings` None = replicated.
    On one CPU device the rows run in chunks (predict_chunks)."""
    sharding.check_rules(rules, mesh)

    def predict_probs(params, inputs):
        with sharding.activation_rules(mesh, rules):
            logits = _forward_in_chunks(forward, params, inputs,
                                        predict_chunks(inputs, mesh))
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    if param_shardings is None:
        param_shardings = sharding.replicated(mesh)
    return jax.jit(predict_probs, in_shardings=(param_shardings,
                                                sharding.batch_sharding(mesh, 0)),
                   out_shardings=sharding.replicated(mesh))
