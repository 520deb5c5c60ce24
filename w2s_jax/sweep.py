"""Several seeds and losses in one command, summarised with their spread.

Each (seed, loss) is an ordinary run with its own results file; shared
stages come from the stage cache. The summary follows the paper: gold
accuracies are averaged over seeds first and PGR is computed from the means;
the per-seed PGRs give the spread.
"""
from __future__ import annotations


import numpy as np

from w2s_jax import config as config_lib
from w2s_jax import experiment
from w2s_jax.report import metrics, results as results_lib
from w2s_jax.core.progress import log


def run(config, workdir: str) -> dict:
    seeds = config_lib.sweep_values(config.seeds, int) or [config.seed]
    loss_names = config_lib.sweep_values(config.losses, str) or [config.loss]
    if len(seeds) == 1 and len(loss_names) == 1:
        return experiment.run(_with(config, seeds[0], loss_names[0]), workdir)
    config_lib.validate(config)
    runs = {loss: [experiment.run(_with(config, seed, loss), workdir)
                   for seed in seeds] for loss in loss_names}
    summary = summarize(runs)
    name = (f"sweep_{config.task}_{config.weak.name}-to-{config.strong.name}_"
            f"seeds{'-'.join(map(str, seeds))}")
    path = results_lib.write_named(workdir, name, summary, summary_table(summary))
    log(summary_table(summary))
    log(f"[results] {path}")
    return summary


def _with(config, seed: int, loss: str):
    config = config.copy_and_resolve_references()
    config.seed, config.loss, config.seeds, config.losses = seed, loss, "", ""
    return config


def _spread(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()),
            "min": float(arr.min()), "max": float(arr.max()), "n": len(values)}


def summarize(runs: dict[str, list[dict]]) -> dict:
    out = {"losses": {}}
    for loss, results in runs.items():
        first = results[0]
        out.update(task=first["task"], models=first["models"],
                   seeds=[r["seed"] for r in results])
        entry = {"runs": [results_lib.run_name(r) for r in results]}
        for key in ("accuracy", "auroc"):
            means = {stage: float(np.mean([r["gold_test"][stage][key]
                                           for r in results]))
                     for stage in ("weak", "w2s", "ceiling")}
            entry[key] = {
                **{stage: _spread([r["gold_test"][stage][key] for r in results])
                   for stage in means},
                "pgr_of_means": metrics.pgr(means["weak"], means["w2s"],
                                            means["ceiling"]),
                "pgr_per_seed": _spread([r["pgr"][key] for r in results]),
            }
        entry["agreement_w2s_vs_weak"] = {
            part: _spread([r["agreement"]["w2s_vs_weak"][part] for r in results])
            for part in ("overall", "weak_correct", "weak_wrong")}
        out["losses"][loss] = entry
    return out


def _pm(spread: dict) -> str:
    if spread["mean"] is None:
        return "n/a"
    return f"{spread['mean']:.3f} ± {spread['std']:.3f}"


def summary_table(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = [f"## {summary['task']}: {summary['models']['weak']} -> "
             f"{summary['models']['strong']}, seeds {seeds} (mean ± std over seeds)",
             "",
             "| loss | weak acc | w2s acc | ceiling acc | PGR (of mean acc) | "
             "PGR per seed [min, max] | PGR AUROC (of means) | agreement w2s/weak |",
             "|---|---|---|---|---|---|---|---|"]
    for loss, entry in summary["losses"].items():
        acc, auroc = entry["accuracy"], entry["auroc"]
        per_seed = acc["pgr_per_seed"]
        bounds = ("" if per_seed["mean"] is None else
                  f" [{per_seed['min']:.2f}, {per_seed['max']:.2f}]")
        pgr = acc["pgr_of_means"]
        pgr_auroc = auroc["pgr_of_means"]
        lines.append(
            f"| {loss} | {_pm(acc['weak'])} | {_pm(acc['w2s'])} | "
            f"{_pm(acc['ceiling'])} | {'n/a' if pgr is None else f'{pgr:.3f}'} | "
            f"{_pm(per_seed)}{bounds} | "
            f"{'n/a' if pgr_auroc is None else f'{pgr_auroc:.3f}'} | "
            f"{_pm(entry['agreement_w2s_vs_weak']['overall'])} |")
    return "\n".join(lines)
