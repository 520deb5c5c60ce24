"""Run one training stage through the stage cache.

A stage trains a learner on some train-pool examples with some targets and
a loss, then predicts the gold test set and any other sets a recipe asks
for (storing soft probabilities, hard labels and their correctness). It is
keyed by everything that determines it, so recipes that share a stage (the
w2s and bootstrap recipes share the weak model; an xent and a logconf run
share weak and ceiling) train it once, and a stage interrupted in training
resumes from its last checkpoint when the same command is run again.

With `config.early_stopping.eval_every` > 0 the stage holds out a
validation slice of its own training examples (with its own targets: gold
for gold stages, weak labels for students), and the training loop's
evaluation hook predicts the test set and that slice every N steps; see
experiment/early_stopping.py for the three answers read from them.
"""
from __future__ import annotations

import os

import numpy as np

from w2s_jax.core import metric_writers, sharding, stages
from w2s_jax.core.progress import log
from w2s_jax.data import batching, packing
from w2s_jax.experiment import early_stopping
from w2s_jax.report import metrics
from w2s_jax.train import features, loop, losses, memory, steps


def train_stage(ctx, name: str, learner, *, train_idx: np.ndarray,
                targets: np.ndarray, loss_name: str, description: str,
                model_index: int, predict: dict | None = None,
                feature_layers: tuple[int, ...] = ()) -> stages.StageResult:
    """Train `learner` on train-pool examples `train_idx` with `targets`.

    `predict`: {set name: train-pool indices} to predict besides the test
    set (e.g. the weak labels on half B). `feature_layers`: after training,
    also store the finetuned model's pooled features of these layers for the
    whole train pool and test set (`features_L<k>_train` / `_test`), for
    probes on top of a finetuned model. `description` says what the stage
    trained on, for tables.
    """
    config = ctx.config
    loss = losses.get_loss(loss_name)
    # Which keys a run may set was checked against its losses up front
    # (config.validate); here each loss takes the keys it owns.
    user = losses.user_params(loss_name, _set_loss_params(config),
                              sorted(losses.LOSSES))
    loss_params = losses.resolve_params(loss_name, user, targets)
    gold = ctx.test_labels
    predict_sets = {"test": ("test", np.arange(len(gold)), gold),
                    **{k: ("train", idx, ctx.train_labels[idx])
                       for k, idx in (predict or {}).items()}}
    es = config.early_stopping
    fit_idx, fit_targets, val = train_idx, targets, None
    if es.eval_every:
        val = early_stopping.validation_split(ctx.train_groups[train_idx],
                                              es.val_fraction,
                                              config.seed)
        fit_idx, fit_targets = train_idx[val.fit], targets[val.fit]
    settings = learner.settings
    spec = {
        "learner": learner.spec,
        # How often progress is printed does not change what is computed.
        "train": settings.key_fields(),
        "loss": loss_name, "loss_params": loss_params, "seed": config.seed,
        "train_data": [learner.fingerprint("train", train_idx),
                       stages.fingerprint(targets)],
        "predict_data": {k: [learner.fingerprint(side, idx),
                             stages.fingerprint(labels)]
                         for k, (side, idx, labels) in sorted(predict_sets.items())},
    }
    # Added only when used, so the keys of every other stage stay as they were.
    if es.eval_every:
        spec["early_stopping"] = {"eval_every": es.eval_every,
                                  "val_fraction": es.val_fraction}
    if feature_layers:
        spec["feature_layers"] = list(feature_layers)

    def compute(inprogress_dir):
        num_classes = targets.shape[1]
        forward, params = learner.init(num_classes, config.seed, ctx.mesh)
        predict_step = steps.make_predict_step(
            forward, ctx.mesh, param_shardings=sharding.shardings_of(params))

        val_idx = None if val is None else train_idx[val.held_out]
        # One set of padded lengths for every set this stage's predict step
        # runs on, so it compiles as few shapes as the ladder would.
        length_sets = (
            [learner.lengths(side, idx) for side, idx, _ in predict_sets.values()]
            + ([] if val is None else [learner.lengths("train", val_idx)]))
        rungs = batching.eval_rungs(length_sets, settings.eval_batch_size,
                                    settings.max_ctx)
        # A stage that trains packed predicts packed too, in rows as long
        # as its longest padded example, eval_batch_size rows to a batch.
        packed = None
        if rungs and settings.pack and hasattr(
                learner.inputs("test", np.arange(0)), "pack"):
            packed = packing.eval_plan(
                length_sets, length=max(rungs), rows=settings.eval_batch_size,
                quantum=sharding.batch_size_divisor(ctx.mesh))

        def predict_probs(params, side, idx):
            return loop.predict(
                predict_step, params, make_inputs=learner.inputs(side, idx),
                lengths=learner.lengths(side, idx),
                batch_size=settings.eval_batch_size, max_ctx=settings.max_ctx,
                mesh=ctx.mesh, num_classes=num_classes, rungs=rungs,
                packed=packed)

        evals_dir = os.path.join(inprogress_dir, "evals")
        on_eval = None
        if val is not None:
            val_labels = targets[val.held_out].argmax(-1)

            def on_eval(step, params):
                probs = {
                    "test": predict_probs(params, "test", predict_sets["test"][1]),
                    "val": predict_probs(params, "train", val_idx)}
                early_stopping.save_eval(evals_dir, step, probs)
                # For the training curves (config.logs): val accuracy is
                # against the stage's own targets, as the honest choice's.
                return {"test_accuracy": np.mean(probs["test"].argmax(-1) == gold),
                        "val_accuracy": np.mean(probs["val"].argmax(-1) ==
                                                val_labels)}

        writer = metric_writers.for_stage(config.logs, ctx.workdir, name,
                                          stages.stage_key(spec))
        estimate = memory.for_learner(learner, params, ctx.mesh,
                                      learner.lengths("train", fit_idx))
        if estimate is not None:  # None: a linear head on features
            log(f"[{name}] {memory.format(estimate)}")
        try:
            params, record = loop.finetune(
                name=name, forward=forward, params=params,
                make_inputs=learner.inputs("train", fit_idx),
                lengths=learner.lengths("train", fit_idx),
                train_targets=fit_targets, settings=settings, loss=loss,
                loss_params=loss_params, mesh=ctx.mesh, seed=config.seed,
                checkpoint_dir=os.path.join(inprogress_dir, "ckpt"),
                checkpoint_every=config.checkpoint_every_steps,
                eval_every=es.eval_every, on_eval=on_eval, writer=writer,
                trainable=getattr(learner, "trainable", None))
        finally:
            writer.close()
        arrays = {}
        for set_name, (side, idx, labels) in predict_sets.items():
            arrays.update(prediction_arrays(
                set_name, predict_probs(params, side, idx), labels))
        record["test_metrics"] = metrics.summarize_predictions(
            arrays["test_probs"], gold)
        if val is not None:
            history = early_stopping.load_evals(evals_dir)
            arrays.update(history)
            arrays["val_positions"] = val.held_out
            record["early_stopping"] = early_stopping.select(
                history, val_targets=targets[val.held_out], test_labels=gold)
        for layer in feature_layers:
            for side in ("train", "test"):
                idx = np.arange(len(ctx.tokens.kept[side]))
                arrays[f"features_L{layer}_{side}"] = features.extract(
                    learner.net, params["backbone"],
                    [learner.ids[side][i] for i in idx], pooling=learner.pooling,
                    layer=layer, batch_size=settings.eval_batch_size,
                    max_ctx=config.max_ctx, mesh=ctx.mesh,
                    name=f"{name}-features-L{layer}-{side}")
        log(f"[{name}] gold test accuracy "
            f"{record['test_metrics']['accuracy']:.4f}")
        return record, arrays

    result = stages.run_stage(ctx.workdir, name, spec, compute,
                              store=ctx.store)
    result.record["description"] = description
    result.record["model"] = ctx.model_name(model_index)
    # How good and how calibrated the labels it learned from are (gold
    # stages: accuracy 1, confidence 1, ECE 0).
    train_gold = ctx.train_labels[train_idx]
    result.record["targets_quality"] = {
        "accuracy": float(np.mean(targets.argmax(-1) == train_gold)),
        "mean_confidence": float(targets.max(-1).mean()),
        "ece": metrics.expected_calibration_error(targets, train_gold)}
    return result


def prediction_arrays(set_name: str, probs: np.ndarray,
                      labels: np.ndarray) -> dict[str, np.ndarray]:
    """What every stage stores of its predictions on a set: soft
    probabilities, hard labels and their correctness."""
    hard = probs.argmax(-1).astype(np.int32)
    return {f"{set_name}_probs": probs, f"{set_name}_hard": hard,
            f"{set_name}_correct": hard == labels}


def untrained_record(test_probs: np.ndarray, test_labels: np.ndarray, *,
                     examples: int = 0, **extra) -> dict:
    """The record of a stage that trains nothing (a rule, a combination of
    supervisors, a prompt): what results read of a trained stage."""
    return {"test_metrics": metrics.summarize_predictions(test_probs, test_labels),
            **extra, "steps": 0, "examples": examples, "final_loss": None,
            "padding_waste": 0.0, "loss_curve": [], "train_seconds": 0.0}


def _set_loss_params(config) -> dict:
    return {k: v for k, v in config.loss_params.to_dict().items() if v is not None}
