"""The three-stage weak-to-strong experiment.

    weak on gold (half A) -> weak labels on half B (soft, hard, correct)
    strong ceiling on gold (half A, or B: config.ceiling_half)
    strong on weak labels (half B) with config.loss
    -> gold test accuracy / AUROC of all three, PGR, agreement

Each stage is a `finetune_stage` call that goes through the stage cache, so
stages compose into longer chains (bootstrapping) and finished ones are
reused across runs and configs (an xent and a logconf run share their weak
and ceiling stages).
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from w2s_jax import config as config_lib
from w2s_jax import losses, report, sharding, stages, train
from w2s_jax.data import batching, sources, splits
from w2s_jax.models import registry
from w2s_jax.progress import log


@dataclasses.dataclass
class PreparedModel:
    """A resolved model with every example tokenized by its tokenizer."""
    role: str
    model: registry.ResolvedModel
    config: ml_collections.ConfigDict
    train_ids: list[np.ndarray]
    test_ids: list[np.ndarray]


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
    weak, strong, counts = _tokenize_all(data, config)
    num_classes = max(2, int(data.train_labels.max()) + 1,
                      int(data.test_labels.max()) + 1)
    train_labels = data.train_labels[counts["train_kept"]]
    test_labels = data.test_labels[counts["test_kept"]]
    half_a, half_b = splits.split_halves(len(train_labels), config.seed)
    gold = np.eye(num_classes, dtype=np.float32)[train_labels]

    common = dict(workdir=workdir, config=config, mesh=mesh,
                  test_labels=test_labels)
    weak_stage = finetune_stage(
        "weak", weak, train_idx=half_a, targets=gold[half_a],
        extra_predict={"B": ([weak.train_ids[i] for i in half_b],
                             train_labels[half_b])},
        loss_name="xent", **common)
    ceiling_half = half_a if config.ceiling_half == "A" else half_b
    ceiling_stage = finetune_stage(
        "ceiling", strong, train_idx=ceiling_half, targets=gold[ceiling_half],
        loss_name="xent", **common)
    weak_labels = weak_stage.arrays["B_probs"]
    w2s_stage = finetune_stage(
        "w2s", strong, train_idx=half_b, targets=weak_labels,
        loss_name=config.loss, **common)

    results = report.build_results(
        config=config, data=data, counts=counts, halves=(half_a, half_b),
        test_labels=test_labels,
        stages={"weak": weak_stage, "ceiling": ceiling_stage,
                "w2s": w2s_stage},
        models={"weak": weak.model.source, "strong": strong.model.source},
        workdir=workdir)
    path = report.write_results(results, workdir)
    log(report.summary_table(results))
    log(f"[results] {path}")
    return results


def finetune_stage(name: str, prepared: PreparedModel, *, workdir: str,
                   config: ml_collections.ConfigDict, mesh, train_idx,
                   targets: np.ndarray, loss_name: str,
                   test_labels: np.ndarray,
                   extra_predict: dict | None = None) -> stages.StageResult:
    """Train `prepared` on (train_idx, targets); predict the test set and
    any `extra_predict` sets ({name: (ids, gold labels)}), storing for each
    the soft probabilities, hard labels and their correctness. Reused from
    the cache when already done."""
    settings = _settings(prepared, config)
    loss_params = config.loss_params.to_dict() if loss_name != "xent" else {}
    train_ids = [prepared.train_ids[i] for i in train_idx]
    predict_sets = {"test": (prepared.test_ids, test_labels),
                    **(extra_predict or {})}
    spec = {
        "model": {"name": prepared.model.name, "source": prepared.model.source,
                  "backbone": dataclasses.asdict(prepared.model.backbone_config),
                  "linear_probe": prepared.config.linear_probe,
                  "head_init": prepared.config.head_init},
        "train": dataclasses.asdict(settings),
        "loss": loss_name, "loss_params": loss_params, "seed": config.seed,
        "train_data": stages.fingerprint(*train_ids, targets),
        "predict_data": {k: stages.fingerprint(*ids, gold)
                         for k, (ids, gold) in sorted(predict_sets.items())},
    }

    def compute():
        module = train.build_classifier(
            prepared.model, num_classes=targets.shape[1],
            linear_probe=prepared.config.linear_probe,
            head_init=prepared.config.head_init)
        params = train.init_params(module, prepared.model,
                                   head_init=prepared.config.head_init,
                                   seed=config.seed, mesh=mesh)
        params, record = train.finetune(
            name=name, module=module, params=params, train_ids=train_ids,
            train_targets=targets, settings=settings,
            loss=losses.get_loss(loss_name), loss_params=loss_params,
            mesh=mesh, pad_id=prepared.model.tokenizer.pad_id, seed=config.seed)
        predict_step = train.make_predict_step(module, mesh)
        arrays = {}
        for set_name, (ids, gold) in predict_sets.items():
            probs = train.predict(
                predict_step, params, ids, batch_size=settings.eval_batch_size,
                max_ctx=settings.max_ctx, pad_id=prepared.model.tokenizer.pad_id,
                mesh=mesh, num_classes=targets.shape[1])
            arrays[f"{set_name}_probs"] = probs
            arrays[f"{set_name}_hard"] = probs.argmax(-1).astype(np.int32)
            arrays[f"{set_name}_correct"] = arrays[f"{set_name}_hard"] == gold
        record["test_metrics"] = report.metrics_on(arrays["test_probs"],
                                                   test_labels)
        log(f"[{name}] gold test accuracy "
            f"{record['test_metrics']['accuracy']:.4f}")
        return record, arrays

    return stages.run_stage(workdir, name, spec, compute)


def _settings(prepared: PreparedModel, config) -> train.TrainSettings:
    model_cfg, train_cfg = prepared.config, config.train
    minibatch = (model_cfg.minibatch_size or prepared.model.default_minibatch_size
                 or train_cfg.minibatch_size)
    minibatch = min(minibatch, train_cfg.batch_size)
    if train_cfg.batch_size % minibatch:
        raise ValueError(f"config.train.batch_size ({train_cfg.batch_size}) "
                         f"must be a multiple of the {prepared.role} model's "
                         f"minibatch size ({minibatch})")
    return train.TrainSettings(
        lr=model_cfg.lr or prepared.model.default_lr, head_lr=model_cfg.head_lr,
        batch_size=train_cfg.batch_size, minibatch_size=minibatch,
        epochs=train_cfg.epochs, lr_schedule=train_cfg.lr_schedule,
        warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        eval_batch_size=train_cfg.eval_batch_size, max_ctx=config.max_ctx,
        log_every=train_cfg.log_every)


def _check_divisible(config, mesh) -> None:
    data_size = sharding.batch_size_divisor(mesh)
    for field in ("minibatch_size", "eval_batch_size"):
        value = config.train[field]
        if value % data_size:
            raise ValueError(f"config.train.{field}={value} must be divisible "
                             f"by the mesh's data axis size {data_size}")


def _tokenize_all(data: splits.TaskData, config):
    """Tokenize with both models; drop examples too long for EITHER.

    Dropping jointly keeps the weak, ceiling and w2s stages on the very same
    examples, so accuracies, PGR and agreement compare like with like.
    """
    models = {role: registry.resolve(config[role].name)
              for role in ("weak", "strong")}
    tokenized = {}
    for role, model in models.items():
        tokenized[role] = {
            side: batching.tokenize(model.tokenizer, texts,
                                    max_ctx=config.max_ctx,
                                    overlength=config.overlength)
            for side, texts in (("train", data.train_texts),
                                ("test", data.test_texts))}
    counts = {}
    for side in ("train", "test"):
        too_long = np.zeros(len(tokenized["weak"][side].ids), bool)
        for role in models:
            too_long |= tokenized[role][side].too_long
        keep = (~too_long if config.overlength == "drop"
                else np.ones_like(too_long))
        counts[f"{side}_kept"] = np.flatnonzero(keep)
        counts[f"{side}_over_length"] = int(too_long.sum())
        if too_long.any():
            action = "dropped" if config.overlength == "drop" else "truncated"
            log(f"[data] {side}: {int(too_long.sum())} of {len(too_long)} "
                f"examples longer than max_ctx={config.max_ctx} were {action}")
    prepared = []
    for role, model in models.items():
        ids = {side: [tokenized[role][side].ids[i] for i in counts[f"{side}_kept"]]
               for side in ("train", "test")}
        prepared.append(PreparedModel(role, model, config[role],
                                      ids["train"], ids["test"]))
    for side in ("train", "test"):
        labels = data.train_labels if side == "train" else data.test_labels
        kept = labels[counts[f"{side}_kept"]]
        if len(np.unique(kept)) < 2:
            raise ValueError(f"task {config.task!r}: the {side} set has one "
                             f"class left after over-length filtering "
                             f"(counts {np.bincount(kept).tolist()})")
    return prepared[0], prepared[1], counts
