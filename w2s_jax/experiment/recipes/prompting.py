"""Prompting baselines for a decoder, beside the paper's finetuning stages.

    weak, ceiling, w2s  exactly the w2s recipe's stages (same cache keys)
    zero_shot           the last model prompted with no demonstrations
    few_shot_gold       ... with config.prompting.shots demonstrations from
                        half B, labelled with gold labels
    few_shot_weak       ... with the same demonstrations labelled with the
                        weak model's hard labels

No prompting stage trains: each scores the gold test set by the next-token
log-probability of each class's verbalizer (w2s_jax/train/prompting.py).
The "few_shot" comparison is the paper's few-shot PGR: weak supervisor,
few_shot_weak as student, few_shot_gold as ceiling. Prompts read the
checkpoint's own weights: a generative finetune (config.generative) starts
only the finetuning stages.
"""
from __future__ import annotations

import numpy as np

from w2s_jax.core import sharding, stages
from w2s_jax.core.errors import UsageError
from w2s_jax.core.progress import log
from w2s_jax.data import splits
from w2s_jax.experiment.recipes import w2s
from w2s_jax.experiment.recipes.base import Comparison, RecipeOutput
from w2s_jax.experiment.stage import prediction_arrays, untrained_record
from w2s_jax.models import registry
from w2s_jax.report import metrics
from w2s_jax.train import prompting, steps


def run(ctx) -> RecipeOutput:
    config, p = ctx.config, ctx.config.prompting
    model = ctx.models[-1]
    # Refused before anything trains.
    registry.check_tied_decoder(model, "config.recipe='prompting'")
    verbalizers = prompting.parse_verbalizers(p.verbalizers)
    if len(verbalizers) != ctx.num_classes:
        raise UsageError(
            f"config.prompting.verbalizers={p.verbalizers!r} has "
            f"{len(verbalizers)} entries but task {config.task!r} has "
            f"{ctx.num_classes} classes; give one per class, in class order")
    token_ids = prompting.verbalizer_ids(model.tokenizer, verbalizers, model.name)
    base = w2s.run(ctx)
    weak = base.stages["weak"]
    half_b = ctx.halves()[1]

    scored = {"zero_shot": _prompt_stage(ctx, "zero_shot", [], None, token_ids,
                                         "prompt, no demonstrations")}
    comparisons = list(base.comparisons)
    demo_details = {}
    if p.shots:
        # The weak condition must not see gold labels, not even to choose
        # its examples, so the draw balances the weak model's labels; the
        # gold condition shows the same examples with their gold labels.
        # One fixed set for every test example (a per-example draw would
        # average over demonstration sets, at the cost of a prompt per
        # example and set).
        weak_hard = weak.arrays["B_probs"].argmax(-1)
        rng = np.random.default_rng([config.seed, splits.stable_hash("prompting")])
        positions = prompting.draw_demonstrations(weak_hard, p.shots,
                                                  ctx.num_classes, rng)
        idx = half_b[positions]
        texts = [ctx.texts["train"][i] for i in idx]
        gold = ctx.train_labels[idx]
        for name, labels, kind in (
                ("few_shot_gold", gold, "gold"),
                ("few_shot_weak", weak_hard[positions], "weak (hard)")):
            scored[name] = _prompt_stage(
                ctx, name, list(zip(texts, labels.tolist())), gold, token_ids,
                f"prompt, {p.shots} demonstrations from half B, {kind} labels")
        comparisons.append(Comparison("few_shot", supervisor="weak",
                                      student="few_shot_weak",
                                      ceiling="few_shot_gold"))
        demo_details = {"train_indices": idx.tolist(), "gold": gold.tolist(),
                        "weak": weak_hard[positions].tolist()}
    return RecipeOutput(
        stages={**base.stages, **scored}, comparisons=comparisons,
        details={**base.details,
                 "verbalizers": verbalizers, "verbalizer_ids": token_ids,
                 "shots": p.shots, "calibrate": p.calibrate,
                 "demonstrations": demo_details,
                 "prompting": {name: stage.record["prompting"]
                               for name, stage in scored.items()}})


def _prompt_stage(ctx, name: str, demos: list[tuple[str, int]],
                  demo_gold: np.ndarray | None, token_ids: list[int],
                  description: str) -> stages.StageResult:
    """Score the test set with `demos` ((text, class) pairs) in the prompt."""
    config, p = ctx.config, ctx.config.prompting
    model, index = ctx.models[-1], len(ctx.models) - 1
    verbalizers = prompting.parse_verbalizers(p.verbalizers)
    pairs = [(text, verbalizers[label]) for text, label in demos]

    def build(queries, shown):
        return prompting.build_prompts(
            model.tokenizer, queries, instruction=p.instruction, demos=shown,
            template=p.template, max_ctx=config.max_ctx)

    prompts = build(ctx.texts["test"], pairs)
    # The content-free prompt of each number of demonstrations dropped, so
    # each query is calibrated against the prompt it was actually given.
    kept_counts = sorted(set(prompts.dropped.tolist()))
    content_free_ids = [build([prompting.CONTENT_FREE], pairs[n:]).ids[0]
                        for n in kept_counts]
    spec = {
        "learner": {"prompting": {"name": model.name, "source": model.source,
                                  "compute_dtype": config.compute_dtype}},
        "train": {}, "loss": None, "loss_params": {}, "seed": config.seed,
        "train_data": [],
        "prompts": stages.fingerprint(*prompts.ids),
        "content_free": stages.fingerprint(*content_free_ids),
        "verbalizer_ids": token_ids, "calibrate": p.calibrate,
        "predict_data": {"test": [stages.fingerprint(*prompts.ids),
                                  stages.fingerprint(ctx.test_labels)]},
    }

    def compute(_):  # nothing to resume
        module = steps.build_classifier(model, num_classes=len(token_ids),
                                        linear_probe=True, head_init="zeros")
        params = steps.init_params(module, model, head_init="zeros",
                                   seed=config.seed, mesh=ctx.mesh)["backbone"]
        step = prompting.make_score_step(
            model, token_ids, ctx.mesh, sharding.shardings_of(params),
            dtype=steps.COMPUTE_DTYPES[config.compute_dtype])
        n = len(prompts.ids)
        logprobs = prompting.score(
            step, params, prompts.ids + content_free_ids,
            num_classes=len(token_ids), pad_id=model.tokenizer.pad_id,
            batch_size=config.train.eval_batch_size, max_ctx=config.max_ctx,
            mesh=ctx.mesh)
        test_lp, prior = logprobs[:n], logprobs[n:]
        prior_each = prior[np.searchsorted(kept_counts, prompts.dropped)]
        raw = prompting.class_probs(test_lp)
        calibrated = prompting.class_probs(test_lp, prior_each)
        probs = calibrated if p.calibrate else raw
        arrays = {**prediction_arrays("test", probs, ctx.test_labels),
                  "test_logprobs": test_lp, "content_free_logprobs": prior,
                  "test_demos_dropped": prompts.dropped,
                  "test_truncated": prompts.truncated}
        record = untrained_record(
            probs, ctx.test_labels, examples=len(demos), prompting={
                "shots": len(demos),
                "demonstrations_dropped_mean": float(prompts.dropped.mean()),
                "queries_truncated": int(prompts.truncated.sum()),
                "prompt_tokens_mean": float(np.mean([len(x) for x in prompts.ids])),
                # How much of the next-token mass the label tokens get: low
                # means the prompt does not make the model answer with them.
                "verbalizer_mass_mean": float(np.exp(test_lp).sum(-1).mean()),
                "accuracy_uncalibrated": float(np.mean(raw.argmax(-1) == ctx.test_labels)),
                "accuracy_calibrated": float(np.mean(calibrated.argmax(-1) == ctx.test_labels)),
            })
        log(f"[{name}] gold test accuracy {record['test_metrics']['accuracy']:.4f}"
            f" (uncalibrated {record['prompting']['accuracy_uncalibrated']:.4f}"
            f", calibrated {record['prompting']['accuracy_calibrated']:.4f})")
        return record, arrays

    result = stages.run_stage(ctx.workdir, name, spec, compute,
                              store=ctx.store)
    result.record["description"] = description
    result.record["model"] = ctx.model_name(index)
    result.record["targets_quality"] = _demo_quality(demos, demo_gold,
                                                     len(token_ids))
    return result


def _demo_quality(demos, demo_gold, num_classes) -> dict:
    """How right the demonstrations' labels are. Zero-shot has none: its
    accuracy and ECE are None; confidence 1.0 keeps the low-signal warning
    (which reads it) quiet, as there is no label to be flat."""
    if not demos:
        return {"accuracy": None, "mean_confidence": 1.0, "ece": None}
    labels = np.array([label for _, label in demos])
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    return {"accuracy": float(np.mean(labels == demo_gold)),
            "mean_confidence": 1.0,
            "ece": metrics.expected_calibration_error(onehot, demo_gold)}
