"""Bootstrapping through a chain of models M1 < M2 < ... < Mn.

    weak       M1 on gold half A; predicts half B
    link2      M2 on M1's labels of slice 1 of half B; predicts slice 2
    ...
    link<n>    Mn on M(n-1)'s labels of slice n-1
    direct     Mn on M1's labels of the same slice as link<n> (no chain)
    ceiling    Mn on gold (half A, or B: config.ceiling_half)

How half B is shared among links is `config.bootstrap.pool`:
"disjoint" cuts it into n-1 disjoint slices (whole groups each), so no
model labels examples it trained on; "reuse_b" gives every link all of
half B (each model then labels its own training data). Links train with
config.loss on soft labels, or on hardened one-hots
(`config.weak_labels`). The results compare the chain's last student
with the direct M1 -> Mn student, both against Mn's ceiling.
"""
from __future__ import annotations

import numpy as np

from w2s_jax.core.errors import UsageError
from w2s_jax.data import splits
from w2s_jax.experiment.recipes.base import (Comparison, RecipeOutput, ceiling_stage,
                                              weak_stage)
from w2s_jax.experiment.stage import train_stage
from w2s_jax.train import labels

POOLS = ("disjoint", "reuse_b")


def pool_slices(half_b: np.ndarray, n_slices: int, pool: str,
                groups: np.ndarray, seed: int) -> list[np.ndarray]:
    """Train-pool indices of each link's slice of half B (each sorted)."""
    if pool == "reuse_b":
        return [half_b] * n_slices
    # Whole groups, in a seeded order, filled slice by slice to ~equal sizes.
    group_ids = groups[half_b]
    unique = np.unique(group_ids)
    order = np.random.default_rng([seed, splits.stable_hash("bootstrap")]
                                  ).permutation(len(unique))
    sizes = np.array([np.sum(group_ids == g) for g in unique[order]])
    bounds = np.searchsorted(np.cumsum(sizes),
                             len(half_b) * np.arange(1, n_slices) / n_slices)
    slices = [np.sort(half_b[np.isin(group_ids, part)])
              for part in np.split(unique[order], bounds)]
    if any(len(s) == 0 for s in slices):
        raise UsageError(f"half B ({len(half_b)} examples) is too small for "
                         f"{n_slices} disjoint bootstrap slices; use more "
                         f"data or config.bootstrap.pool=reuse_b")
    return slices


def run(ctx) -> RecipeOutput:
    config, n = ctx.config, len(ctx.models)
    if n < 3:
        raise UsageError(f"the bootstrap recipe needs at least 3 models in "
                         f"config.models (M1 < M2 < M3 ...), got {n}; with "
                         f"two models it is the w2s recipe")
    pool, kind = config.bootstrap.pool, config.weak_labels
    half_a, half_b = ctx.halves()
    slices = pool_slices(half_b, n - 1, pool, ctx.train_groups, config.seed)

    def on_b(probs_b, subset):  # rows of a half-B prediction for `subset`
        return probs_b[np.searchsorted(half_b, subset)]

    weak = weak_stage(ctx)
    stages = {"weak": weak}
    supervisor_probs = on_b(weak.arrays["B_probs"], slices[0])
    for k in range(1, n):  # model index k = link k+1
        name = f"link{k + 1}"
        last = k == n - 1
        stages[name] = train_stage(
            ctx, name, ctx.learner(k), train_idx=slices[k - 1],
            targets=labels.hand_off(supervisor_probs, kind),
            loss_name=config.loss, model_index=k,
            # The last link's predictions on its own slice: the misfit.
            predict={"train": slices[k - 1]} if last else {"next": slices[k]},
            description=f"{kind} labels of {stages[_prev(k)].record['model']}"
                        f", slice {k} of half B ({len(slices[k - 1])})")
        if not last:
            supervisor_probs = stages[name].arrays["next_probs"]
    final = f"link{n}"
    stages["direct"] = train_stage(
        ctx, "direct", ctx.learner(n - 1), train_idx=slices[-1],
        targets=labels.hand_off(on_b(weak.arrays["B_probs"], slices[-1]), kind),
        loss_name=config.loss, model_index=n - 1, predict={"train": slices[-1]},
        description=f"{kind} labels of {ctx.model_name(0)}, slice {n - 1} "
                    f"of half B ({len(slices[-1])})")
    stages["ceiling"] = ceiling_stage(ctx)
    return RecipeOutput(
        stages=stages,
        comparisons=[
            # Misfit: each student against the labels it trained on (the
            # chain's last link: link n-1's predictions on its slice).
            Comparison("chain", supervisor="weak", student=final,
                       ceiling="ceiling", student_train_set="train",
                       weak_labels=(_prev(n - 1), "next")),
            Comparison("direct", supervisor="weak", student="direct",
                       ceiling="ceiling", student_train_set="train",
                       weak_labels=("weak", "B"),
                       weak_label_rows=np.searchsorted(half_b, slices[-1]))],
        details={"pool": pool, "targets": kind,
                 "slices": [int(len(s)) for s in slices],
                 "halves": {"A": len(half_a), "B": len(half_b)},
                 "ceiling_half": config.ceiling_half})


def _prev(k: int) -> str:
    return "weak" if k == 1 else f"link{k}"
