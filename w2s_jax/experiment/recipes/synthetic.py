"""A synthetic supervisor with controlled errors -> strong student.

    synthetic  no model: the gold labels of half B and of the test set,
               corrupted by a seeded rule (config.synthetic, see
               w2s_jax/train/synthetic.py): random flips, class-conditional
               rates, or errors tied to length or a keyword; soft labels
               with a chosen confidence
    w2s        the last model, on half B with the synthetic labels and
               config.loss
    ceiling    the last model, on gold (half A, or B: config.ceiling_half)

The supervisor goes through the stage cache like a trained one (its test
predictions give PGR and agreement); its record holds the realised error
structure on half B and on the test set, which the results carry under
`recipe_details.realised`. Which errors a strong student imitates is then
the w2s stage's agreement where the supervisor is wrong, per error kind at
one error rate.
"""
from __future__ import annotations

import numpy as np

from w2s_jax.core import stages
from w2s_jax.core.errors import UsageError
from w2s_jax.core.progress import log
from w2s_jax.data import splits
from w2s_jax.experiment.recipes.base import Comparison, RecipeOutput, ceiling_stage
from w2s_jax.experiment.stage import prediction_arrays, train_stage, untrained_record
from w2s_jax.train import synthetic


def rule_of(config, kind: str | None = None) -> synthetic.Rule:
    """The config's rule (validated by config.validate), of `kind` if given."""
    from w2s_jax.config import sweep_values
    syn = config.synthetic
    return synthetic.Rule(
        kind=kind or syn.kind, error_rate=float(syn.error_rate),
        rates=tuple(sweep_values(syn.rates, float, "config.synthetic.rates")),
        length_quantile=float(syn.length_quantile), keyword=syn.keyword,
        confidence=float(syn.confidence))


def rule_spec(rule: synthetic.Rule) -> dict:
    """The fields that determine the rule's labels (the stage key's part)."""
    spec = {"kind": rule.kind, "confidence": rule.confidence}
    if rule.kind == "class_conditional" and rule.rates:
        spec["rates"] = list(rule.rates)
    else:
        spec["error_rate"] = rule.error_rate
    if rule.kind == "length":
        spec["length_quantile"] = rule.length_quantile
    if rule.kind == "keyword":
        spec["keyword"] = rule.keyword
    return spec


def describe(rule: synthetic.Rule) -> str:
    what = {"flip": f"random flips at {rule.error_rate:g}",
            "class_conditional": (
                f"class rates {','.join(f'{r:g}' for r in rule.rates)}"
                if rule.rates else
                f"class-0 errors, {rule.error_rate:g} overall"),
            "length": f"errors at {rule.error_rate:g} on lengths above the "
                      f"{rule.length_quantile:g} quantile",
            "keyword": f"errors at {rule.error_rate:g} on /{rule.keyword}/"}[rule.kind]
    labels = "hard" if rule.confidence == 1.0 else f"soft {rule.confidence:g}"
    return f"{what}, {labels}"


def run(ctx) -> RecipeOutput:
    """One supervisor (config.synthetic.kind), or one per kind of
    config.synthetic.kinds at the same error rate, each teaching its own
    student, in one table: "synthetic_<kind>" and "w2s_<kind>"."""
    from w2s_jax.config import sweep_values
    config = ctx.config
    strong = len(ctx.models) - 1
    half_a, half_b = ctx.halves()
    kinds = sweep_values(config.synthetic.kinds, str, "config.synthetic.kinds")
    rules = {"": rule_of(config)} if not kinds else {
        f"_{kind}": rule_of(config, kind) for kind in kinds}
    stages, comparisons, details = {}, [], {}
    for suffix, rule in rules.items():
        supervisor, student = f"synthetic{suffix}", f"w2s{suffix}"
        stages[supervisor] = synthetic_stage(ctx, rule, half_b)
        stages[student] = train_stage(
            ctx, student, ctx.learner(strong), train_idx=half_b,
            targets=np.asarray(stages[supervisor].arrays["B_probs"], np.float32),
            loss_name=config.loss, model_index=strong, predict={"train": half_b},
            description=f"synthetic labels ({describe(rule)}), half B "
                        f"({len(half_b)})")
        comparisons.append(Comparison(
            student, supervisor=supervisor, student=student, ceiling="ceiling",
            student_train_set="train", weak_labels=(supervisor, "B")))
        details[rule.kind] = {"rule": rule_spec(rule),
                              "realised": stages[supervisor].record["synthetic"]}
    stages["ceiling"] = ceiling_stage(ctx)
    one = details.pop(rule.kind) if not kinds else {"kinds": details}
    return RecipeOutput(
        stages=stages, comparisons=comparisons,
        details={**one, "halves": {"A": len(half_a), "B": len(half_b)},
                 "ceiling_half": config.ceiling_half})


def synthetic_stage(ctx, rule: synthetic.Rule,
                    half_b: np.ndarray) -> stages.StageResult:
    """The rule's labels of half B and of the test set, as a stage."""
    config, k = ctx.config, ctx.num_classes
    texts = ctx.texts
    sets = {"B": ([texts["train"][i] for i in half_b], ctx.train_labels[half_b]),
            "test": (texts["test"], ctx.test_labels)}
    spec = {
        "learner": {"synthetic": rule_spec(rule)},
        "train": {}, "loss": None, "loss_params": {}, "seed": config.seed,
        "train_data": [],
        "predict_data": {name: [stages.fingerprint(*set_texts),
                                stages.fingerprint(labels)]
                         for name, (set_texts, labels) in sorted(sets.items())},
    }

    def compute(_):  # nothing to resume
        # "Long" means the same on every set: the cut is half B's quantile.
        threshold = (synthetic.length_threshold(sets["B"][0],
                                                rule.length_quantile)
                     if rule.kind == "length" else None)
        arrays, realised = {}, {}
        for name, (set_texts, labels) in sets.items():
            rng = np.random.default_rng(
                [config.seed, splits.stable_hash("synthetic"),
                 splits.stable_hash(name)])
            try:
                probs, wrong, feature = synthetic.supervise(
                    rule, labels, set_texts, k, rng, threshold=threshold)
            except ValueError as err:
                raise UsageError(str(err)) from None
            arrays.update(prediction_arrays(name, probs, labels))
            realised[name] = synthetic.realised(labels, wrong, feature, k)
        if threshold is not None:
            realised["length_threshold_chars"] = threshold
        record = untrained_record(arrays["test_probs"], ctx.test_labels,
                                  synthetic=realised)
        log(f"[synthetic] {describe(rule)}: realised error rate "
            f"{realised['B']['error_rate']:.4f} on half B, "
            f"{realised['test']['error_rate']:.4f} on test")
        return record, arrays

    result = stages.run_stage(ctx.workdir, "synthetic", spec, compute,
                              store=ctx.store)
    result.record["description"] = (f"gold labels, corrupted ({describe(rule)})"
                                    f", half B ({len(half_b)}) and test")
    result.record["model"] = f"synthetic:{rule.kind}"
    # It reads gold labels (as a gold stage: accuracy 1, confidence 1, ECE 0);
    # its own labels' quality is the student's targets_quality.
    result.record["targets_quality"] = {"accuracy": 1.0, "mean_confidence": 1.0,
                                        "ece": 0.0}
    return result
