"""The three-stage weak-to-strong experiment.

    weak on gold (half A) -> weak labels on half B (soft, hard, correct)
    strong ceiling on gold (half A, or B: config.ceiling_half)
    strong on weak labels (half B) with config.loss
    -> gold test accuracy / AUROC of all three, PGR, agreement

A stage trains a learner (a whole model on tokens, or a linear head on
frozen features: learners.py). Each stage is a `finetune_stage` call that
goes through the stage cache, so
stages compose into longer chains (bootstrapping) and finished ones are
reused across runs and configs (an xent and a logconf run share their weak
and ceiling stages); a stage interrupted in training resumes from its last
checkpoint when the same command is run again.
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from w2s_jax import config as config_lib
from w2s_jax.core import sharding, stages
from w2s_jax.report import results as results_lib
from w2s_jax.train import features, learners, loop, losses, steps
from w2s_jax.data import batching, sources, splits
from w2s_jax.models import registry
from w2s_jax.core.progress import log

# Adam's learning rate for a linear head on standardised frozen features
# (the release's vision probes used 1e-3).
FEATURE_HEAD_LR = 1e-3


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or reuse) every stage and write the results file."""
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    _check_divisible(config, mesh)
    data = splits.load_task(
        config.task, data_dir=sources.resolve_data_dir(config.data_dir or None),
        seed=config.seed, n_train=config.n_train, n_test=config.n_test,
        balance=config.balance)
    log(f"[data] {config.task}: {len(data.train_texts)} train pool, "
        f"{len(data.test_texts)} test ({data.provenance.get('source')})")
    models = {role: registry.resolve(config[role].name)
              for role in ("weak", "strong")}
    for role, model in models.items():
        log(f"[{role}] {model.name} ({model.family}) from {model.source['kind']}")
    ids, counts = _tokenize_all(data, models, config)
    kept = {side: counts[f"{side}_kept"] for side in ("train", "test")}
    texts = {"train": [data.train_texts[i] for i in kept["train"]],
             "test": [data.test_texts[i] for i in kept["test"]]}
    train_labels = data.train_labels[kept["train"]]
    test_labels = data.test_labels[kept["test"]]
    num_classes = max(2, int(train_labels.max()) + 1, int(test_labels.max()) + 1)
    half_a, half_b = splits.split_halves(len(train_labels), config.seed)
    gold = np.eye(num_classes, dtype=np.float32)[train_labels]

    weak, strong = (
        _learner(role, models[role], ids.get(role), texts, config, workdir,
                 mesh) for role in ("weak", "strong"))
    common = dict(workdir=workdir, config=config, mesh=mesh,
                  test_labels=test_labels)
    weak_stage = finetune_stage(
        "weak", weak, train_idx=half_a, targets=gold[half_a],
        extra_predict={"B": (half_b, train_labels[half_b])},
        loss_name="xent", **common)
    ceiling_half = half_a if config.ceiling_half == "A" else half_b
    ceiling_stage = finetune_stage(
        "ceiling", strong, train_idx=ceiling_half, targets=gold[ceiling_half],
        loss_name="xent", **common)
    w2s_stage = finetune_stage(
        "w2s", strong, train_idx=half_b, targets=weak_stage.arrays["B_probs"],
        loss_name=config.loss, **common)

    results = results_lib.build_results(
        config=config, data=data, counts=counts, halves=(half_a, half_b),
        test_labels=test_labels,
        stages={"weak": weak_stage, "ceiling": ceiling_stage,
                "w2s": w2s_stage},
        models={role: m.source for role, m in models.items()},
        learners={"weak": weak.spec, "strong": strong.spec},
        workdir=workdir)
    path = results_lib.write_results(results, workdir)
    log(results_lib.summary_table(results))
    log(f"[results] {path}")
    return results


def finetune_stage(name: str, learner, *, workdir: str,
                   config: ml_collections.ConfigDict, mesh,
                   train_idx: np.ndarray, targets: np.ndarray, loss_name: str,
                   test_labels: np.ndarray,
                   extra_predict: dict | None = None) -> stages.StageResult:
    """Train `learner` on train-pool examples `train_idx` with `targets`;
    predict the test set and any `extra_predict` sets ({name: (train-pool
    indices, gold labels)}), storing for each the soft probabilities, hard
    labels and their correctness. Reused from the cache when already done."""
    loss_params = config.loss_params.to_dict() if loss_name != "xent" else {}
    test_idx = np.arange(len(test_labels))
    predict_sets = {"test": ("test", test_idx, test_labels),
                    **{k: ("train", idx, gold)
                       for k, (idx, gold) in (extra_predict or {}).items()}}
    settings = learner.settings
    spec = {
        "learner": learner.spec,
        # How often progress is printed does not change what is computed.
        "train": {k: v for k, v in dataclasses.asdict(settings).items()
                  if k != "log_every"},
        "loss": loss_name, "loss_params": loss_params, "seed": config.seed,
        "train_data": [learner.fingerprint("train", train_idx),
                       stages.fingerprint(targets)],
        "predict_data": {k: [learner.fingerprint(side, idx),
                             stages.fingerprint(gold)]
                         for k, (side, idx, gold) in sorted(predict_sets.items())},
    }

    def compute(inprogress_dir):
        num_classes = targets.shape[1]
        forward, params = learner.init(num_classes, config.seed, mesh)
        params, record = loop.finetune(
            name=name, forward=forward, params=params,
            make_inputs=learner.inputs("train", train_idx),
            lengths=learner.lengths("train", train_idx), train_targets=targets,
            settings=settings, loss=losses.get_loss(loss_name),
            loss_params=loss_params, mesh=mesh, seed=config.seed,
            checkpoint_dir=os.path.join(inprogress_dir, "ckpt"),
            checkpoint_every=config.checkpoint_every_steps)
        predict_step = steps.make_predict_step(
            forward, mesh, param_shardings=sharding.shardings_of(params))
        arrays = {}
        for set_name, (side, idx, gold) in predict_sets.items():
            probs = loop.predict(
                predict_step, params, make_inputs=learner.inputs(side, idx),
                lengths=learner.lengths(side, idx),
                batch_size=settings.eval_batch_size, mesh=mesh,
                num_classes=num_classes)
            arrays[f"{set_name}_probs"] = probs
            arrays[f"{set_name}_hard"] = probs.argmax(-1).astype(np.int32)
            arrays[f"{set_name}_correct"] = arrays[f"{set_name}_hard"] == gold
        record["test_metrics"] = results_lib.metrics_on(arrays["test_probs"],
                                                   test_labels)
        log(f"[{name}] gold test accuracy "
            f"{record['test_metrics']['accuracy']:.4f}")
        return record, arrays

    return stages.run_stage(workdir, name, spec, compute)


def _learner(role, model, ids, texts, config, workdir, mesh):
    model_cfg = config[role]
    mode = "features" if model.family == registry.BOW_FAMILY else model_cfg.mode
    settings = _settings(role, model, config, mode)
    pooling = model_cfg.pooling or registry.default_pooling(model)
    if mode == "finetune":
        return learners.TokenLearner(role, model, model_cfg, pooling, settings,
                                     ids, compute_dtype=config.compute_dtype,
                                     remat=config.remat)
    feature_spec = {"name": model.name, "source": model.source,
                    "pooling": pooling, "layer": model_cfg.feature_layer}
    if model.family == registry.BOW_FAMILY:
        feature_spec = {"name": model.name, "source": model.source}
    fingerprint = {side: stages.fingerprint(*(ids[side] if ids else texts[side]))
                   for side in ("train", "test")}

    def compute(_):  # extraction keeps no resumable state
        if model.family == registry.BOW_FAMILY:
            # Fit on the whole train pool's texts (no labels), never on test.
            featurizer = registry.bow_featurizer(model).fit(texts["train"])
            return {}, {side: featurizer.transform(texts[side])
                        for side in ("train", "test")}
        module = steps.build_classifier(model, num_classes=2, linear_probe=True,
                                        head_init="zeros", pooling=pooling)
        params = steps.init_params(module, model, head_init="zeros",
                                   seed=config.seed, mesh=mesh)["backbone"]
        return {}, {side: features.extract(
            model, params, ids[side], pooling=pooling,
            layer=model_cfg.feature_layer,
            batch_size=config.train.eval_batch_size, max_ctx=config.max_ctx,
            mesh=mesh, name=f"features-{role}-{side}")
            for side in ("train", "test")}

    stage = stages.run_stage(
        workdir, "features",
        {"features": feature_spec, "data": fingerprint}, compute)
    train_feats, test_feats = stage.arrays["train"], stage.arrays["test"]
    if model.family != registry.BOW_FAMILY:
        # TF-IDF rows are already normalised; z-scoring would blow up rare terms.
        train_feats, test_feats = features.standardize(train_feats, test_feats)
    return learners.FeatureLearner(role, feature_spec, settings,
                                   {"train": train_feats, "test": test_feats})


def _settings(role, model, config, mode) -> steps.TrainSettings:
    model_cfg, train_cfg = config[role], config.train
    if mode == "features":
        # A linear head on fixed features: the whole batch fits in memory.
        minibatch = train_cfg.batch_size
        default_lr = (model.default_lr if model.family == registry.BOW_FAMILY
                      else FEATURE_HEAD_LR)
    else:
        minibatch = (model_cfg.minibatch_size or model.default_minibatch_size
                     or train_cfg.minibatch_size)
        minibatch, default_lr = min(minibatch, train_cfg.batch_size), model.default_lr
    if train_cfg.batch_size % minibatch:
        raise ValueError(f"config.train.batch_size ({train_cfg.batch_size}) "
                         f"must be a multiple of the {role} model's "
                         f"minibatch size ({minibatch})")
    return steps.TrainSettings(
        lr=model_cfg.lr or default_lr, head_lr=model_cfg.head_lr,
        batch_size=train_cfg.batch_size, minibatch_size=minibatch,
        epochs=model_cfg.epochs or train_cfg.epochs,
        lr_schedule=train_cfg.lr_schedule, warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        eval_batch_size=train_cfg.eval_batch_size, max_ctx=config.max_ctx,
        log_every=train_cfg.log_every)


def _check_divisible(config, mesh) -> None:
    data_size = sharding.batch_size_divisor(mesh)
    for field in ("minibatch_size", "eval_batch_size"):
        value = config.train[field]
        if value % data_size:
            raise ValueError(f"config.train.{field}={value} must be divisible "
                             f"by the mesh's batch split (data x fsdp axes) "
                             f"{data_size}")


def _tokenize_all(data: splits.TaskData, models: dict, config):
    """Tokenize with every model that has a tokenizer; drop examples too
    long for ANY of them.

    Dropping jointly keeps the weak, ceiling and w2s stages on the very same
    examples, so accuracies, PGR and agreement compare like with like.
    """
    side_texts = {"train": data.train_texts, "test": data.test_texts}
    tokenized = {role: {side: batching.tokenize(model.tokenizer, texts,
                                                max_ctx=config.max_ctx,
                                                overlength=config.overlength)
                        for side, texts in side_texts.items()}
                 for role, model in models.items() if model.tokenizer}
    counts = {}
    for side, texts in side_texts.items():
        too_long = np.zeros(len(texts), bool)
        for per_side in tokenized.values():
            too_long |= per_side[side].too_long
        keep = ~too_long if config.overlength == "drop" else np.ones_like(too_long)
        counts[f"{side}_kept"] = np.flatnonzero(keep)
        counts[f"{side}_over_length"] = int(too_long.sum())
        if too_long.any():
            action = "dropped" if config.overlength == "drop" else "truncated"
            log(f"[data] {side}: {int(too_long.sum())} of {len(too_long)} "
                f"examples longer than max_ctx={config.max_ctx} were {action}")
        labels = data.train_labels if side == "train" else data.test_labels
        left = labels[counts[f"{side}_kept"]]
        if len(np.unique(left)) < 2:
            raise ValueError(f"task {config.task!r}: the {side} set has one "
                             f"class left after over-length filtering "
                             f"(counts {np.bincount(left).tolist()})")
    ids = {role: {side: [per_side[side].ids[i] for i in counts[f"{side}_kept"]]
                  for side in side_texts}
           for role, per_side in tokenized.items()}
    return ids, counts
