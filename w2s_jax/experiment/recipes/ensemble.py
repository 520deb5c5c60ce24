"""Several weak supervisors, one strong student: their ensemble against
each of them alone.

    weak_m1 .. weak_m<n-1>  every model but the last, on gold half A; each
                            predicts half B (weak_m1 is the w2s recipe's
                            "weak" stage, shared through the cache)
    ensemble                no training: the supervisors' predictions on
                            half B and on the test set, combined
                            (config.ensemble.combine: "mean" or "vote",
                            w2s_jax/train/supervisors.py)
    w2s_m1 .. w2s_m<n-1>    the last model on half B with one supervisor's
                            labels
    w2s_ensemble            the last model on half B with the combined labels
    ceiling                 the last model on gold (config.ceiling_half)

Students train with config.loss on config.weak_labels (soft, or hardened
one-hots; a vote is one-hot either way). The ensemble goes through the
stage cache like a trained supervisor, keyed by its inputs' fingerprints,
so its test predictions give PGR and agreement like any other.
"""
from __future__ import annotations

import numpy as np

from w2s_jax.core import stages
from w2s_jax.core.progress import log
from w2s_jax.experiment.recipes.base import (Comparison, RecipeOutput, ceiling_stage,
                                              weak_stage)
from w2s_jax.experiment.stage import prediction_arrays, train_stage, untrained_record
from w2s_jax.train import labels, supervisors


def run(ctx) -> RecipeOutput:
    config = ctx.config
    half_a, half_b = ctx.halves()
    weak = supervisor_stages(ctx)
    how = config.ensemble.combine
    ensemble = ensemble_stage(ctx, weak, how, half_b)
    sources = {**weak, "ensemble": ensemble}
    students, comparisons = {}, []
    for name, stage in sources.items():
        student = f"w2s_{name.removeprefix('weak_')}"  # w2s_m1, w2s_ensemble
        students[student] = student_stage(ctx, student, stage, half_b)
        comparisons.append(Comparison(
            student, supervisor=name, student=student, ceiling="ceiling",
            student_train_set="train", weak_labels=(name, "B")))
    return RecipeOutput(
        stages={**sources, **students, "ceiling": ceiling_stage(ctx)},
        comparisons=comparisons,
        details={"combine": how, "targets": config.weak_labels,
                 "supervisors": {name: {"model": stage.record["model"],
                                        "B_accuracy": _accuracy(stage)}
                                 for name, stage in weak.items()},
                 "combined_B_accuracy": _accuracy(ensemble),
                 "halves": {"A": len(half_a), "B": len(half_b)},
                 "ceiling_half": config.ceiling_half})


def supervisor_stages(ctx) -> dict[str, stages.StageResult]:
    """weak_m1 .. weak_m<n-1>: every model but the last on gold half A."""
    return {f"weak_m{i + 1}": weak_stage(ctx, i)
            for i in range(len(ctx.models) - 1)}


def student_stage(ctx, name: str, supervisor: stages.StageResult,
                  half_b: np.ndarray) -> stages.StageResult:
    """The last model on half B with `supervisor`'s labels there."""
    config, strong = ctx.config, len(ctx.models) - 1
    kind = config.weak_labels
    return train_stage(
        ctx, name, ctx.learner(strong), train_idx=half_b,
        targets=labels.hand_off(supervisor.arrays["B_probs"], kind),
        loss_name=config.loss, model_index=strong,
        # Its predictions on its own training examples: the misfit, and the
        # routing of the next co-supervision round.
        predict={"train": half_b},
        description=f"{kind} labels of {supervisor.record['model']}, half B "
                    f"({len(half_b)})")


def ensemble_stage(ctx, weak: dict[str, stages.StageResult], how: str,
                   half_b: np.ndarray) -> stages.StageResult:
    """The supervisors' predictions on half B and on the test set, combined
    by `how`, as a stage (nothing trained)."""
    gold = {"B": ctx.train_labels[half_b], "test": ctx.test_labels}
    stacked = {name: np.stack([stage.arrays[f"{name}_probs"]
                               for stage in weak.values()])
               for name in gold}
    models = [stage.record["model"] for stage in weak.values()]
    spec = {
        "learner": {"ensemble": {"combine": how, "supervisors": models}},
        "train": {}, "loss": None, "loss_params": {}, "train_data": [],
        # What it is computed from: the supervisors' predictions (in order)
        # and the gold labels its correctness is measured against.
        "predict_data": {name: [stages.fingerprint(stacked[name]),
                                stages.fingerprint(gold[name])]
                         for name in sorted(gold)},
    }

    def compute(_):  # nothing to resume
        arrays = {}
        for name, truth in gold.items():
            probs = np.asarray(supervisors.combine(stacked[name], how), np.float32)
            arrays.update(prediction_arrays(name, probs, truth))
        record = untrained_record(arrays["test_probs"], ctx.test_labels)
        log(f"[ensemble] {how} of {', '.join(models)}: accuracy "
            f"{np.mean(arrays['B_correct']):.4f} on half B, "
            f"{record['test_metrics']['accuracy']:.4f} on test")
        return record, arrays

    result = stages.run_stage(ctx.workdir, "ensemble", spec, compute,
                              store=ctx.store)
    result.record["description"] = (f"no training: {how} of {len(weak)} "
                                    f"supervisors' predictions, half B "
                                    f"({len(half_b)}) and test")
    result.record["model"] = f"{how}({', '.join(models)})"
    # Made only of stages trained on gold (as a gold stage: accuracy 1,
    # confidence 1, ECE 0); the combined labels' own quality is the
    # student's targets_quality.
    result.record["targets_quality"] = {"accuracy": 1.0, "mean_confidence": 1.0,
                                        "ece": 0.0}
    return result


def _accuracy(stage: stages.StageResult) -> float:
    """Accuracy of a supervisor's labels on half B (argmax vs gold)."""
    return float(np.mean(stage.arrays["B_correct"]))
