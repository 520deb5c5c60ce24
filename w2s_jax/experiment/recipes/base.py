"""What every recipe returns: its stages and the comparisons it reports."""
from __future__ import annotations

import dataclasses

from w2s_jax.core import stages


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One PGR: `student`, trained on labels that start with `supervisor`,
    against `ceiling` (the student's model on gold).

    For the misfit diagnostic (report/diagnostics.py), a recipe may name
    the student's predictions on its own training examples
    (`student_train_set`: the student stage's `<set>_probs`) and the labels
    it trained on, in the same order (`weak_labels`: (stage, set), that
    stage's `<set>_probs`)."""
    name: str
    supervisor: str
    student: str
    ceiling: str
    student_train_set: str | None = None
    weak_labels: tuple[str, str] | None = None


@dataclasses.dataclass
class RecipeOutput:
    stages: dict[str, stages.StageResult]  # in the order tables show them
    comparisons: list[Comparison]
    details: dict = dataclasses.field(default_factory=dict)  # JSON, recipe-specific
