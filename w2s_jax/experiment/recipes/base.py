"""What every recipe returns: its stages and the comparisons it reports."""
from __future__ import annotations

import dataclasses

import numpy as np

from w2s_jax.core import stages


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One PGR: `student`, trained on labels that start with `supervisor`,
    against `ceiling` (the student's model on gold).

    For the misfit diagnostic (report/diagnostics.py), a recipe may name
    the student's predictions on its own training examples
    (`student_train_set`: the student stage's `<set>_probs`) and the labels
    it trained on, in the same order (`weak_labels`: (stage, set), that
    stage's `<set>_probs`; `weak_label_rows`: the rows of that array the
    student trained on, when it holds more)."""
    name: str
    supervisor: str
    student: str
    ceiling: str
    student_train_set: str | None = None
    weak_labels: tuple[str, str] | None = None
    weak_label_rows: np.ndarray | None = None


@dataclasses.dataclass
class RecipeOutput:
    stages: dict[str, stages.StageResult]  # in the order tables show them
    comparisons: list[Comparison]
    details: dict = dataclasses.field(default_factory=dict)  # JSON, recipe-specific


def ceiling_stage(ctx, learner=None, name: str = "ceiling"):
    """The last model (or `learner`) trained on gold labels of
    config.ceiling_half: every recipe's ceiling, shared through the cache."""
    from w2s_jax.experiment.stage import train_stage

    half = ctx.config.ceiling_half
    idx = ctx.halves()[0 if half == "A" else 1]
    strong = len(ctx.models) - 1
    return train_stage(
        ctx, name, learner or ctx.learner(strong), train_idx=idx,
        targets=ctx.gold(idx), loss_name="xent", model_index=strong,
        description=f"gold, half {half} ({len(idx)})")


def weak_stage(ctx, index: int = 0):
    """Model `index` (default the first) on gold half A, predicting half B:
    the weak labels of every recipe that trains its supervisor. The first
    model's stage is "weak" in every recipe, so they share it through the
    cache; another supervisor's is "weak_m<k>"."""
    from w2s_jax.experiment.stage import train_stage

    half_a, half_b = ctx.halves()
    return train_stage(
        ctx, "weak" if index == 0 else f"weak_m{index + 1}", ctx.learner(index),
        train_idx=half_a, targets=ctx.gold(half_a), loss_name="xent",
        predict={"B": half_b}, model_index=index,
        description=f"gold, half A ({len(half_a)})")

