"""What every recipe returns: its stages and the comparisons it reports."""
from __future__ import annotations

import dataclasses

from w2s_jax.core import stages


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One PGR: `student`, trained on labels that start with `supervisor`,
    against `ceiling` (the student's model on gold)."""
    name: str
    supervisor: str
    student: str
    ceiling: str


@dataclasses.dataclass
class RecipeOutput:
    stages: dict[str, stages.StageResult]  # in the order tables show them
    comparisons: list[Comparison]
    details: dict = dataclasses.field(default_factory=dict)  # JSON, recipe-specific
