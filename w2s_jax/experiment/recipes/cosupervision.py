"""Co-supervision (Liu & Alahi 2024, "Co-supervised learning: improving
weak-to-strong generalization with hierarchical mixture of experts"):
several weak teachers, each example of half B taught by the one the
student agrees with most, alternating student training and teacher
assignment.

    weak_m1 .. weak_m<n-1>  the teachers: every model but the last on gold
                            half A, predicting half B (as in the ensemble
                            recipe, shared through the cache)
    ensemble                no training: the teachers' mean prediction (the
                            supervisor every round is compared with)
    cosup_r0                the last model on half B with the mean labels
                            (the ensemble recipe's w2s_ensemble stage with
                            combine=mean: one cache entry for both)
    cosup_r<r>              r = 1 .. config.cosupervision.rounds: a fresh
                            last model on half B, each example labelled by
                            the teacher that round r-1's student agrees with
                            most (w2s_jax/train/supervisors.py: route)
    ceiling                 the last model on gold (config.ceiling_half)

Labels are config.weak_labels (soft, or hardened) of the chosen teacher's
prediction, trained with config.loss. The paper's second part, dropping
examples where teacher and student disagree, is not done: every round
trains on all of half B, so rounds differ only in who labels what.
"""
from __future__ import annotations

import numpy as np

from w2s_jax.core.progress import log
from w2s_jax.experiment.recipes.base import Comparison, RecipeOutput, ceiling_stage
from w2s_jax.experiment.recipes.ensemble import (ensemble_stage, student_stage,
                                                  supervisor_stages)
from w2s_jax.experiment.stage import train_stage
from w2s_jax.train import labels, supervisors


def run(ctx) -> RecipeOutput:
    config, strong = ctx.config, len(ctx.models) - 1
    kind = config.weak_labels
    half_a, half_b = ctx.halves()
    gold_b = ctx.train_labels[half_b]
    teachers = supervisor_stages(ctx)
    teacher_b = np.stack([t.arrays["B_probs"] for t in teachers.values()])
    ensemble = ensemble_stage(ctx, teachers, "mean", half_b)
    # Named as the ensemble recipe's stage, so the two share it.
    students = {"cosup_r0": student_stage(ctx, "w2s_ensemble", ensemble, half_b)}
    rounds = [{"round": 0, "labels": "mean of the teachers",
               "B_accuracy": float(np.mean(ensemble.arrays["B_correct"]))}]
    for r in range(1, config.cosupervision.rounds + 1):
        previous = students[f"cosup_r{r - 1}"].arrays["train_probs"]
        routed, chosen = (np.asarray(a) for a in
                          supervisors.route(teacher_b, previous))
        name = f"cosup_r{r}"
        students[name] = train_stage(
            ctx, name, ctx.learner(strong), train_idx=half_b,
            targets=labels.hand_off(routed, kind), loss_name=config.loss,
            model_index=strong, predict={"train": half_b},
            description=f"{kind} labels of the teacher round {r - 1}'s "
                        f"student agrees with most, half B ({len(half_b)})")
        share = {t: float(np.mean(chosen == i)) for i, t in enumerate(teachers)}
        accuracy = float(np.mean(routed.argmax(-1) == gold_b))
        rounds.append({"round": r, "labels": "routed", "share": share,
                       "B_accuracy": accuracy})
        log(f"[cosupervision] round {r}: routed labels' accuracy "
            f"{accuracy:.4f} on half B; share per teacher "
            + ", ".join(f"{t} {s:.3f}" for t, s in share.items()))
    # The misfit needs the labels a student fit as a stored stage's array:
    # round 0's are the ensemble's; routed labels are made above, not stored.
    comparisons = [Comparison("cosup_r0", supervisor="ensemble",
                              student="cosup_r0", ceiling="ceiling",
                              student_train_set="train",
                              weak_labels=("ensemble", "B"))]
    comparisons += [Comparison(name, supervisor="ensemble", student=name,
                               ceiling="ceiling") for name in list(students)[1:]]
    right = teacher_b.argmax(-1) == gold_b[None]
    return RecipeOutput(
        stages={**teachers, "ensemble": ensemble, **students,
                "ceiling": ceiling_stage(ctx)},
        comparisons=comparisons,
        details={"targets": kind,
                 "teachers": {t: {"model": stage.record["model"],
                                  "B_accuracy": float(np.mean(stage.arrays["B_correct"]))}
                              for t, stage in teachers.items()},
                 # The best any routing could do: some teacher is right.
                 "any_teacher_right_B": float(np.mean(right.any(0))),
                 "rounds": rounds,
                 "halves": {"A": len(half_a), "B": len(half_b)},
                 "ceiling_half": config.ceiling_half})
