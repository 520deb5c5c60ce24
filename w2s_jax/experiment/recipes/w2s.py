"""The paper's experiment: weak supervisor -> strong student, and the ceiling.

    weak     the first model, on gold half A; predicts half B (the weak labels)
    ceiling  the last model, on gold (half A, or B: config.ceiling_half)
    w2s      the last model, on half B with the weak labels and config.loss
"""
from __future__ import annotations

from w2s_jax.experiment.recipes.base import (Comparison, RecipeOutput, ceiling_stage,
                                              weak_stage)
from w2s_jax.experiment.stage import train_stage
from w2s_jax.train import labels


def run(ctx) -> RecipeOutput:
    config = ctx.config
    strong = len(ctx.models) - 1
    half_a, half_b = ctx.halves()
    weak = weak_stage(ctx)
    ceiling = ceiling_stage(ctx)
    student = train_stage(
        ctx, "w2s", ctx.learner(strong), train_idx=half_b,
        targets=labels.hand_off(weak.arrays["B_probs"], config.weak_labels),
        loss_name=config.loss, model_index=strong,
        # Its predictions on its own training examples, for the misfit
        # (predicting more does not change training).
        predict={"train": half_b},
        description=f"{config.weak_labels} weak labels, half B ({len(half_b)})")
    return RecipeOutput(
        stages={"weak": weak, "w2s": student, "ceiling": ceiling},
        comparisons=[Comparison("w2s", supervisor="weak", student="w2s",
                                ceiling="ceiling", student_train_set="train",
                                weak_labels=("weak", "B"))],
        details={"halves": {"A": len(half_a), "B": len(half_b)},
                 "ceiling_half": config.ceiling_half})
