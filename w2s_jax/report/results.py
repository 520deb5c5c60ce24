"""The results file of one run, and the table a person reads.

Results are built only from the stages' stored records and predictions,
never from timings (those stay in the stage records), so a rerun that
reuses every stage, or resumes an interrupted one, writes a byte-identical
file. Files are append-only in spirit: each run writes
`<workdir>/results/<run name>.json` (and .md), named by its task, models,
loss, seed and stage keys, so runs of different configs in one workdir
never overwrite each other.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile

import numpy as np

from w2s_jax.core import distributed
from w2s_jax.report import diagnostics, metrics

logger = logging.getLogger(__name__)

# Config fields that say how a run executes, not what it computes: a resumed
# or multi-host run writes the same results file as a plain one.
RUN_ONLY_KEYS = ("checkpoint_every_steps", "distributed", "logs", "store")


def build_results(*, ctx, output) -> dict:
    """The results of one run of a recipe, from its stages' stored records
    and predictions only."""
    config, stages = ctx.config, output.stages
    test_labels = ctx.test_labels
    # Test ECE is computed here from the stored predictions, so stage keys
    # and records stay as they were.
    gold_test = {name: {**stage.record["test_metrics"],
                        "ece": metrics.expected_calibration_error(
                            stage.arrays["test_probs"], test_labels)}
                 for name, stage in stages.items()}
    early = {name: stage.record["early_stopping"]
             for name, stage in stages.items() if "early_stopping" in stage.record}
    comparisons = {}
    for comp in output.comparisons:
        sup, student, ceiling = (stages[comp.supervisor], stages[comp.student],
                                 stages[comp.ceiling])
        entry = {
            "supervisor": comp.supervisor, "student": comp.student,
            "ceiling": comp.ceiling,
            "pgr": {key: metrics.pgr(gold_test[comp.supervisor][key],
                                     gold_test[comp.student][key],
                                     gold_test[comp.ceiling][key])
                    for key in ("accuracy", "auroc")},
            "agreement": metrics.agreement(student.arrays["test_probs"],
                                           sup.arrays["test_probs"], test_labels),
            "ceiling_agreement": metrics.agreement(
                ceiling.arrays["test_probs"], sup.arrays["test_probs"],
                test_labels),
        }
        entry.update(_comparison_diagnostics(comp, stages, test_labels))
        if early:
            entry["pgr_early_stopping"] = {
                selection: {key: metrics.pgr(
                    *(early[s][selection][key] for s in
                      (comp.supervisor, comp.student, comp.ceiling)))
                    for key in ("accuracy", "auroc")}
                for selection in SELECTION_LABELS}
        comparisons[comp.name] = entry
    signal = _label_signal(output, comparisons)
    counts = ctx.tokens
    return {
        "recipe": config.recipe,
        "task": config.task,
        "loss": config.loss,
        "seed": config.seed,
        "models": [m.name for m in ctx.models],
        "model_sources": {m.name: m.source for m in ctx.models},
        "data": {
            **ctx.data.provenance,
            "n_train_pool": int(len(counts.kept["train"])),
            "n_test": int(len(test_labels)),
            "overlength_policy": config.overlength, "max_ctx": config.max_ctx,
            "train_over_length": counts.over_length["train"],
            "test_over_length": counts.over_length["test"],
        },
        "recipe_details": output.details,
        # JSON objects are written with sorted keys: the order tables use.
        "stage_order": list(stages),
        "comparison_order": [comp.name for comp in output.comparisons],
        "gold_test": gold_test,
        "early_stopping": early,
        "comparisons": comparisons,
        "label_signal": signal,
        "accuracy_by_difficulty": _by_difficulty(ctx, stages, output.comparisons),
        # Language-model stages whose weights later stages start from.
        "generative": {ctx.model_name(index): {
            "key": stage.key, "path": os.path.relpath(stage.path, ctx.workdir),
            "trained_on": stage.record["description"],
            "steps": stage.record["steps"],
            "heldout_nll": stage.record["heldout_nll"]}
            for index, stage in ctx.generative.items()},
        "stages": {name: {
            "key": stage.key,
            "path": os.path.relpath(stage.path, ctx.workdir),
            "model": stage.record["model"] + (
                " (generative)" if "start" in stage.record["spec"]["learner"]
                else ""),
            "trained_on": stage.record["description"],
            "learner": stage.record["spec"]["learner"],
            "loss": stage.record["spec"]["loss"],
            "loss_params": stage.record["spec"]["loss_params"],
            "targets_quality": stage.record["targets_quality"],
            "steps": stage.record["steps"],
            "examples": stage.record["examples"],
            "final_loss": stage.record["final_loss"],
            "padding_waste": round(stage.record["padding_waste"], 4),
        } for name, stage in stages.items()},
        "config": {key: value
                   for key, value in json.loads(config.to_json()).items()
                   if key not in RUN_ONLY_KEYS},
    }


def _by_difficulty(ctx, stages, comparisons) -> dict:
    """Per stage, gold test accuracy by the task's difficulty level, and per
    comparison the PGR of each level; {} for a task without levels."""
    levels = ctx.test_difficulty
    if levels is None:
        return {}
    per_stage = {name: diagnostics.by_level(
                     stage.arrays["test_probs"].argmax(-1) == ctx.test_labels,
                     levels)
                 for name, stage in stages.items()}
    pgr = {comp.name: {level: metrics.pgr(
               *(per_stage[s][level]["accuracy"]
                 for s in (comp.supervisor, comp.student, comp.ceiling)))
               for level in per_stage[comp.student]}
           for comp in comparisons}
    return {"stages": per_stage, "pgr": pgr}


def _comparison_diagnostics(comp, stages, test_labels) -> dict:
    """Bootstrap CI of the accuracy PGR and error kappa on the gold test
    set; the misfit where the comparison names the student's predictions on
    its training examples and the labels it trained on."""
    correct = {role: stages[getattr(comp, role)].arrays["test_probs"].argmax(-1)
               == test_labels for role in ("supervisor", "student", "ceiling")}
    out = {"pgr_bootstrap": {"accuracy": diagnostics.bootstrap_pgr(
               correct["supervisor"], correct["student"], correct["ceiling"])},
           "error_kappa": diagnostics.error_kappa(correct["supervisor"],
                                                  correct["student"])}
    if comp.student_train_set and comp.weak_labels:
        student = stages[comp.student].arrays
        label_stage, label_set = comp.weak_labels
        weak = stages[label_stage].arrays[f"{label_set}_probs"]
        if comp.weak_label_rows is not None:
            weak = weak[comp.weak_label_rows]
        # Only the examples it fit: an early-stopping slice was held out.
        fitted = np.ones(len(weak), bool)
        if "val_positions" in student:
            fitted[student["val_positions"]] = False
        out["misfit"] = {
            **diagnostics.misfit(
                student[f"{comp.student_train_set}_probs"][fitted], weak[fitted]),
            "supervisor_label_signal": diagnostics.label_signal(weak)}
    return out


def _label_signal(output, comparisons) -> dict:
    """mean(max_c p_c) - 1/K of each stage's training targets and of each
    comparison's supervisor soft labels (before any hardening); one warning
    per run lists those under the threshold."""
    per_stage = {}
    for name, stage in output.stages.items():
        num_classes = stage.arrays["test_probs"].shape[-1]
        per_stage[name] = (stage.record["targets_quality"]["mean_confidence"]
                           - 1.0 / num_classes)
    supervisors = {name: comp["misfit"]["supervisor_label_signal"]
                   for name, comp in comparisons.items() if "misfit" in comp}
    threshold = diagnostics.LOW_SIGNAL_THRESHOLD
    low = [f"{name} trained on targets with signal {value:.3f}"
           for name, value in per_stage.items() if value < threshold]
    # The supervisor's soft labels, where the student did not already show
    # them (hard labels handed off hide how flat they were).
    flagged = {name for name, value in per_stage.items() if value < threshold}
    low += [f"comparison {name}: the supervisor's soft labels have signal "
            f"{value:.3f}" for name, value in supervisors.items()
            if value < threshold and comparisons[name]["student"] not in flagged]
    if low:
        logger.warning(
            "labels carry little signal (mean max-class probability - 1/K; "
            "binary: mean |p - 0.5|; threshold %.2f): %s. A student may "
            "collapse towards the prior.", threshold, "; ".join(low))
    return {"threshold": threshold, "stage_targets": per_stage,
            "supervisor_labels": supervisors, "low": low}


def run_name(results: dict) -> str:
    keys = "".join(s["key"] for s in results["stages"].values())
    tag = hashlib.sha256(keys.encode()).hexdigest()[:8]
    name = (f"{results['task']}_{results['recipe']}_"
            f"{'-to-'.join(results['models'])}_{results['loss']}_"
            f"seed{results['seed']}")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + f"_{tag}"


def write_results(results: dict, workdir: str) -> str:
    """Atomically write results JSON and its Markdown table; return the path."""
    return write_named(workdir, run_name(results), results,
                       summary_table(results))


def write_named(workdir: str, name: str, payload: dict, table: str) -> str:
    """Write `<workdir>/results/<name>.json` and .md (process 0 only)."""
    directory = os.path.join(workdir, "results")
    base = os.path.join(directory, re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
    if distributed.is_primary():
        os.makedirs(directory, exist_ok=True)
        _atomic_write(base + ".json",
                      json.dumps(payload, indent=1, sort_keys=True))
        _atomic_write(base + ".md", table + "\n")
    return base + ".json"


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def runs_table(runs: list[dict]) -> str:
    """One line per run of a grid: each comparison's supervisor, student
    and ceiling accuracy and its PGR."""
    lines = ["| task | models | loss | seed | comparison | supervisor | student "
             "| ceiling | PGR |", "|---|---|---|---|---|---|---|---|---|"]
    for results in runs:
        gold = results["gold_test"]
        for name in results["comparison_order"]:
            comp = results["comparisons"][name]
            lines.append(
                f"| {results['task']} | {' -> '.join(results['models'])} | "
                f"{results['loss']} | {results['seed']} | {name} | "
                f"{_fmt(gold[comp['supervisor']]['accuracy'])} | "
                f"{_fmt(gold[comp['student']]['accuracy'])} | "
                f"{_fmt(gold[comp['ceiling']]['accuracy'])} | "
                f"{_fmt(comp['pgr']['accuracy'])} |")
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    gold, data = results["gold_test"], results["data"]
    lines = [
        f"## {results['task']}: recipe {results['recipe']}, "
        f"{' -> '.join(results['models'])}, loss {results['loss']}, "
        f"seed {results['seed']} ({data['n_test']} gold test examples)",
        "",
        "| stage | model | trained on | label accuracy | label ECE | accuracy | AUROC "
        "| test ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in results["stage_order"]:
        stage = results["stages"][name]
        lines.append(f"| {name} | {stage['model']} | {stage['trained_on']} | "
                     f"{_fmt(stage['targets_quality']['accuracy'])} | "
                     f"{_fmt(stage['targets_quality']['ece'])} | "
                     f"{_fmt(gold[name]['accuracy'])} | "
                     f"{_fmt(gold[name]['auroc'])} | "
                     f"{_fmt(gold[name].get('ece'))} |")
    lines += ["", "| comparison | supervisor -> student (ceiling) | PGR (accuracy) "
              "| PGR (AUROC) | agreement | where supervisor right | where wrong |",
              "|---|---|---|---|---|---|---|"]
    undefined = False
    for name in results["comparison_order"]:
        comp = results["comparisons"][name]
        agree, pgr = comp["agreement"], comp["pgr"]
        undefined |= None in pgr.values()
        lines.append(
            f"| {name} | {comp['supervisor']} -> {comp['student']} "
            f"({comp['ceiling']}) | {_fmt(pgr['accuracy'])} | "
            f"{_fmt(pgr['auroc'])} | {_fmt(agree['overall'])} | "
            f"{_fmt(agree['weak_correct'])} | {_fmt(agree['weak_wrong'])} |")
    if undefined:
        lines.append("\nPGR n/a: the ceiling does not beat the supervisor.")
    for model, gen in results.get("generative", {}).items():
        nll = gen["heldout_nll"]
        lines.append(f"\n{model} (generative): its stages start from a "
                     f"generative finetune ({gen['trained_on']}, "
                     f"{gen['steps']} steps); held-out next-token NLL "
                     f"{nll['before']:.3f} -> {nll['after']:.3f} nats per token.")
    if results.get("accuracy_by_difficulty"):
        lines += ["", difficulty_table(results)]
    if "label_signal" in results:
        lines += ["", diagnostics_table(results)]
    if results["early_stopping"]:
        lines += ["", early_stopping_table(results)]
    return "\n".join(lines)


def difficulty_table(results: dict) -> str:
    """Gold test accuracy of each stage, and each comparison's PGR, per
    difficulty level of the task."""
    by = results["accuracy_by_difficulty"]
    levels = list(next(iter(by["stages"].values())))
    first = by["stages"][results["stage_order"][0]]
    lines = ["Accuracy by difficulty level (the task's own field; n test "
             "examples per level):", "",
             "| stage | " + " | ".join(f"{level} (n={first[level]['n']})"
                                      for level in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name in results["stage_order"]:
        row = by["stages"][name]
        lines.append(f"| {name} | " + " | ".join(
            _fmt(row[level]["accuracy"]) for level in levels) + " |")
    for name in results["comparison_order"]:
        lines.append(f"| PGR {name} | " + " | ".join(
            _fmt(by["pgr"][name].get(level)) for level in levels) + " |")
    return "\n".join(lines)


def diagnostics_table(results: dict) -> str:
    """PGR interval, error kappa and misfit per comparison; low-signal labels."""
    lines = ["Diagnostics: PGR (accuracy) 95% bootstrap interval over gold test "
             "examples; error kappa = Cohen's kappa of the two models' "
             "right/wrong on test (0: errors shared only as chance implies); "
             "misfit = the student vs its weak labels on its own training "
             "examples (mean KL(weak || student), argmax disagreement).", "",
             "| comparison | PGR 95% CI | error kappa | misfit KL | "
             "misfit disagreement |", "|---|---|---|---|---|"]
    for name in results["comparison_order"]:
        comp = results["comparisons"][name]
        boot = comp["pgr_bootstrap"]["accuracy"]
        interval = ("n/a" if boot["low"] is None else
                    f"[{boot['low']:.2f}, {boot['high']:.2f}]")
        if boot["n_undefined"]:
            interval += f" ({boot['n_undefined']} of {boot['n_resamples']} undefined)"
        fit = comp.get("misfit", {})
        lines.append(f"| {name} | {interval} | "
                     f"{_fmt(comp['error_kappa']['kappa'])} | "
                     f"{_fmt(fit.get('kl'))} | {_fmt(fit.get('disagreement'))} |")
    signal = results["label_signal"]
    if signal["low"]:
        lines.append(f"\nWARNING, labels with little signal (mean max-class "
                     f"probability - 1/K below {signal['threshold']}): "
                     + "; ".join(signal["low"]) + ".")
    return "\n".join(lines)


# Early-stopping selections as tables name them: the oracle must never read
# as a method (experiment/early_stopping.py defines each).
SELECTION_LABELS = {
    "final": "final checkpoint",
    "oracle": "oracle (best gold test accuracy: an upper bound, looks at test labels)",
    "honest_acc": "honest (validation accuracy vs own targets)",
    "honest_auroc": "honest (validation AUROC vs own targets)",
}


def early_stopping_table(results: dict) -> str:
    """Gold test accuracy and PGR of each stage under each selection."""
    early = results["early_stopping"]
    names = [n for n in results["stage_order"] if n in early]
    comparisons = results["comparison_order"]
    lines = ["Early stopping (step chosen, gold test accuracy):", "",
             "| selection | " + " | ".join(names) + " | " + " | ".join(
                 f"PGR {c}" for c in comparisons) + " |",
             "|---" * (1 + len(names) + len(comparisons)) + "|"]
    for selection in SELECTION_LABELS:
        cells = [f"{_fmt(early[n][selection]['accuracy'])} "
                 f"(step {early[n][selection]['step']})" for n in names]
        cells += [_fmt(results["comparisons"][c]["pgr_early_stopping"]
                       [selection]["accuracy"]) for c in comparisons]
        lines.append(f"| {SELECTION_LABELS[selection]} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
