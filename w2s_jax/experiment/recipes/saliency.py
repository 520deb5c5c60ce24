"""Concept saliency: how linearly a strong model represents the task, and
what weak labels do to it (the paper's figure on linear probes).

For one supervisor (the first model) and one strong model (the last), five
strategies side by side, probes at each of `config.saliency.layers`
(default: the middle block and the output):

    probe_weak@L          linear probe on frozen layer-L activations, weak labels
    probe_gold@L          the same with gold labels
    finetune_weak         finetune on weak labels (config.loss)
    finetune_weak_probe_gold@L
                          finetune on weak labels, then a linear probe with
                          gold labels on the finetuned model's layer L
    finetune_gold         finetune on gold labels (the ceiling)

Weak-label strategies train on half B, gold ones on config.ceiling_half.
Frozen activations are extracted once per (weights, layer, examples) and
cached; the finetuned model's are stored with its stage. Every strategy is
compared with the supervisor against the finetune-on-gold ceiling.
"""
from __future__ import annotations

from w2s_jax.core.errors import UsageError
from w2s_jax.experiment.recipes.base import (Comparison, RecipeOutput, ceiling_stage,
                                              weak_stage)
from w2s_jax.experiment.stage import train_stage
from w2s_jax.models import registry
from w2s_jax.train import labels


def probe_layers(text: str, model) -> list[int]:
    """Parse "6,-1"; empty = the middle block and the output (-1)."""
    if not text.strip():
        return [max(1, registry.num_layers(model) // 2), -1]
    from w2s_jax import config as config_lib
    return config_lib.sweep_values(text, int, "config.saliency.layers",
                                   "3,-1")


def run(ctx) -> RecipeOutput:
    config = ctx.config
    strong = len(ctx.models) - 1
    model = ctx.models[strong]
    if model.family == registry.BOW_FAMILY:
        raise UsageError("the saliency recipe needs a transformer as the "
                         "strong (last) model; got bow-tfidf")
    layers = probe_layers(config.saliency.layers, model)
    for layer in layers:
        if layer != -1:
            registry.block_name(model, layer)  # names the valid range if bad
    half_a, half_b = ctx.halves()
    gold_idx = half_a if config.ceiling_half == "A" else half_b
    gold_desc = f"gold, half {config.ceiling_half} ({len(gold_idx)})"
    weak_desc = f"{config.weak_labels} weak labels, half B ({len(half_b)})"
    weak = weak_stage(ctx)
    weak_labels = labels.hand_off(weak.arrays["B_probs"], config.weak_labels)
    stages = {"weak": weak}
    finetuner = ctx.learner(strong, mode="finetune")
    stages["finetune_gold"] = ceiling_stage(ctx, finetuner, "finetune_gold")
    finetuned = train_stage(
        ctx, "finetune_weak", finetuner, train_idx=half_b, targets=weak_labels,
        loss_name=config.loss, model_index=strong, description=weak_desc,
        feature_layers=tuple(layers), predict={"train": half_b})
    stages["finetune_weak"] = finetuned
    for layer in layers:
        frozen = ctx.learner(strong, mode="features", layer=layer)
        stages[f"probe_weak@{layer}"] = train_stage(
            ctx, f"probe_weak@{layer}", frozen, train_idx=half_b,
            targets=weak_labels, loss_name=config.loss, model_index=strong,
            predict={"train": half_b},
            description=f"frozen layer {layer}, {weak_desc}")
        stages[f"probe_gold@{layer}"] = train_stage(
            ctx, f"probe_gold@{layer}", frozen, train_idx=gold_idx,
            targets=ctx.gold(gold_idx), loss_name="xent", model_index=strong,
            description=f"frozen layer {layer}, {gold_desc}")
        probe = ctx.probe_learner(
            strong, {"finetuned_stage": finetuned.key, "layer": layer,
                     "pooling": finetuner.pooling},
            finetuned.arrays[f"features_L{layer}_train"],
            finetuned.arrays[f"features_L{layer}_test"])
        name = f"finetune_weak_probe_gold@{layer}"
        stages[name] = train_stage(
            ctx, name, probe, train_idx=gold_idx, targets=ctx.gold(gold_idx),
            loss_name="xent", model_index=strong,
            description=f"finetuned on weak labels, then layer {layer}, "
                        f"{gold_desc}")
    students = [s for s in stages if s not in ("weak", "finetune_gold")]
    return RecipeOutput(
        stages=stages,
        # Misfit for the students of weak labels (the others learnt gold).
        comparisons=[Comparison(s, supervisor="weak", student=s,
                                ceiling="finetune_gold",
                                **({"student_train_set": "train",
                                    "weak_labels": ("weak", "B")}
                                   if "train_probs" in stages[s].arrays else {}))
                     for s in students],
        details={"layers": layers, "gold_half": config.ceiling_half})
