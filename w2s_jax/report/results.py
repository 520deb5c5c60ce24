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
import os
import re
import tempfile

import numpy as np

from w2s_jax.core import distributed
from w2s_jax.report import metrics


# Config fields that say how a run executes, not what it computes: a resumed
# or multi-host run writes the same results file as a plain one.
RUN_ONLY_KEYS = ("checkpoint_every_steps", "distributed")


def metrics_on(probs: np.ndarray, labels: np.ndarray) -> dict:
    return metrics.summarize_predictions(probs, labels)


def build_results(*, config, data, counts, halves, test_labels, stages,
                  models, learners, workdir) -> dict:
    weak, ceiling, w2s = stages["weak"], stages["ceiling"], stages["w2s"]
    weak_b = weak.arrays["B_probs"]
    gold_test = {name: stage.record["test_metrics"]
                 for name, stage in stages.items()}
    weak_probs = weak.arrays["test_probs"]
    return {
        "task": config.task,
        "loss": config.loss,
        "seed": config.seed,
        "models": {"weak": config.weak.name, "strong": config.strong.name},
        "model_sources": models,
        "learners": learners,
        "ceiling_half": config.ceiling_half,
        "data": {
            **data.provenance,
            "n_train_pool": int(len(counts["train_kept"])),
            "n_half_a": int(len(halves[0])), "n_half_b": int(len(halves[1])),
            "n_test": int(len(test_labels)),
            "overlength_policy": config.overlength, "max_ctx": config.max_ctx,
            "train_over_length": counts["train_over_length"],
            "test_over_length": counts["test_over_length"],
        },
        "gold_test": gold_test,
        "weak_labels_on_b": {
            "accuracy": float(np.mean(weak.arrays["B_correct"])),
            "mean_confidence": float(weak_b.max(-1).mean()),
        },
        "pgr": {key: metrics.pgr(gold_test["weak"][key], gold_test["w2s"][key],
                                 gold_test["ceiling"][key])
                for key in ("accuracy", "auroc")},
        "agreement": {
            "w2s_vs_weak": metrics.agreement(w2s.arrays["test_probs"],
                                             weak_probs, test_labels),
            "ceiling_vs_weak": metrics.agreement(ceiling.arrays["test_probs"],
                                                 weak_probs, test_labels),
        },
        "stages": {name: {
            "key": stage.key,
            "path": os.path.relpath(stage.path, workdir),
            "steps": stage.record["steps"],
            "examples": stage.record["examples"],
            "final_loss": stage.record["final_loss"],
            "padding_waste": round(stage.record["padding_waste"], 4),
        } for name, stage in stages.items()},
        "config": {key: value
                   for key, value in json.loads(config.to_json()).items()
                   if key not in RUN_ONLY_KEYS},
    }


def run_name(results: dict) -> str:
    keys = "".join(s["key"] for s in results["stages"].values())
    tag = hashlib.sha256(keys.encode()).hexdigest()[:8]
    models = f"{results['models']['weak']}-to-{results['models']['strong']}"
    name = f"{results['task']}_{models}_{results['loss']}_seed{results['seed']}"
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


def summary_table(results: dict) -> str:
    gold, data = results["gold_test"], results["data"]
    ceiling_half = results["ceiling_half"]
    rows = [
        ("weak", results["models"]["weak"], f"gold, half A ({data['n_half_a']})"),
        ("w2s", results["models"]["strong"],
         f"weak labels, half B ({data['n_half_b']})"),
        ("ceiling", results["models"]["strong"],
         f"gold, half {ceiling_half} "
         f"({data['n_half_a'] if ceiling_half == 'A' else data['n_half_b']})"),
    ]
    lines = [
        f"## {results['task']}: {results['models']['weak']} -> "
        f"{results['models']['strong']}, loss {results['loss']}, "
        f"seed {results['seed']} ({data['n_test']} gold test examples)",
        "",
        "| stage | model | trained on | accuracy | AUROC |",
        "|---|---|---|---|---|",
    ]
    for stage, model, trained_on in rows:
        lines.append(f"| {stage} | {model} | {trained_on} | "
                     f"{_fmt(gold[stage]['accuracy'])} | "
                     f"{_fmt(gold[stage]['auroc'])} |")
    agree = results["agreement"]["w2s_vs_weak"]
    pgr = results["pgr"]
    lines += [
        "",
        f"PGR (accuracy) {_fmt(pgr['accuracy'])}, PGR (AUROC) "
        f"{_fmt(pgr['auroc'])}"
        + ("  (n/a: the ceiling does not beat the weak model)"
           if None in pgr.values() else ""),
        f"Weak-label accuracy on half B: "
        f"{_fmt(results['weak_labels_on_b']['accuracy'])}",
        f"Student-supervisor agreement on test: overall "
        f"{_fmt(agree['overall'])}, where weak is right "
        f"{_fmt(agree['weak_correct'])}, where weak is wrong "
        f"{_fmt(agree['weak_wrong'])}",
    ]
    return "\n".join(lines)
