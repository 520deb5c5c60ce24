"""Several seeds and losses of one recipe, summarised with their spread.

The paper's convention: gold accuracies are averaged over seeds first and
PGR is computed from the means ("PGR of means"); the per-seed PGRs give the
spread. ± is the SAMPLE standard deviation over seeds (n - 1 in the
denominator), as papers report it; undefined for a single seed. The 95%
interval over seeds is a Student-t interval on the per-seed PGRs
(report/diagnostics.py: seed_interval; a bootstrap over 3-5 seeds has too
few distinct resamples).
"""
from __future__ import annotations

import numpy as np

from w2s_jax.report import diagnostics, metrics, results as results_lib


def spread(values) -> dict:
    """Mean, sample std, min, max of the defined values; `n` counts them and
    `n_total` counts all (a seed whose PGR is undefined is left out)."""
    defined = [v for v in values if v is not None]
    out = {"mean": None, "std": None, "min": None, "max": None,
           "n": len(defined), "n_total": len(values)}
    if defined:
        arr = np.asarray(defined, np.float64)
        out.update(mean=float(arr.mean()), min=float(arr.min()),
                   max=float(arr.max()),
                   std=float(arr.std(ddof=1)) if len(arr) > 1 else None)
    return out


def summarize(runs: dict[str, list[dict]]) -> dict:
    """`runs`: loss -> the results of each seed's run of one recipe."""
    first = next(iter(runs.values()))[0]
    out = {"recipe": first["recipe"], "task": first["task"],
           "models": first["models"],
           "seeds": [r["seed"] for r in next(iter(runs.values()))],
           "std": "sample (n - 1)", "losses": {}}
    for loss, results in runs.items():
        entry = {"runs": [results_lib.run_name(r) for r in results],
                 "stages": {}, "comparisons": {}}
        for stage in results[0]["stage_order"]:
            entry["stages"][stage] = {
                key: spread([r["gold_test"][stage][key] for r in results])
                for key in ("accuracy", "auroc")}
            if all("ece" in r["gold_test"][stage] for r in results):
                entry["stages"][stage]["test_ece"] = spread(
                    [r["gold_test"][stage]["ece"] for r in results])
        for name in results[0]["comparison_order"]:
            comp = results[0]["comparisons"][name]
            roles = {role: comp[role] for role in ("supervisor", "student", "ceiling")}
            comp_entry = dict(roles)
            for key in ("accuracy", "auroc"):
                means = [entry["stages"][roles[r]][key]["mean"]
                         for r in ("supervisor", "student", "ceiling")]
                comp_entry[key] = {
                    "pgr_of_means": (None if None in means else
                                     metrics.pgr(*means)),
                    "pgr_per_seed": spread([r["comparisons"][name]["pgr"][key]
                                            for r in results])}
            comp_entry["accuracy"]["pgr_seed_interval"] = diagnostics.seed_interval(
                [r["comparisons"][name]["pgr"]["accuracy"] for r in results])
            per_run = [r["comparisons"][name] for r in results]
            if all("error_kappa" in c for c in per_run):
                comp_entry["error_kappa"] = spread(
                    [c["error_kappa"]["kappa"] for c in per_run])
            if all("misfit" in c for c in per_run):
                comp_entry["misfit"] = {
                    part: spread([c["misfit"][part] for c in per_run])
                    for part in ("kl", "disagreement")}
            comp_entry["agreement"] = {
                part: spread([r["comparisons"][name]["agreement"][part]
                              for r in results])
                for part in ("overall", "weak_correct", "weak_wrong")}
            if "pgr_early_stopping" in comp:
                comp_entry["pgr_early_stopping"] = {
                    selection: _early_pgr(results, name, roles, selection)
                    for selection in comp["pgr_early_stopping"]}
            entry["comparisons"][name] = comp_entry
        out["losses"][loss] = entry
    return out


def _early_pgr(results, name, roles, selection) -> dict:
    """PGR of mean accuracies and per-seed spread under one selection."""
    means = [float(np.mean([r["early_stopping"][roles[role]][selection]["accuracy"]
                            for r in results]))
             for role in ("supervisor", "student", "ceiling")]
    return {"pgr_of_means": metrics.pgr(*means),
            "pgr_per_seed": spread([r["comparisons"][name]["pgr_early_stopping"]
                                    [selection]["accuracy"] for r in results]),
            "student_accuracy": spread([r["early_stopping"][roles["student"]]
                                        [selection]["accuracy"] for r in results])}


def _pm(s: dict) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.3f}" + ("" if s["std"] is None else f" ± {s['std']:.3f}")


def _pgr_spread(s: dict) -> str:
    if s["mean"] is None:
        return f"n/a (0 of {s['n_total']} seeds)"
    text = f"{_pm(s)} [{s['min']:.2f}, {s['max']:.2f}]"
    if s["n"] < s["n_total"]:
        text += f" ({s['n']} of {s['n_total']} seeds defined)"
    return text


def _interval(s) -> str:
    if s is None or s["low"] is None:
        return "n/a"
    return f"[{s['low']:.2f}, {s['high']:.2f}]"


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_table(summary: dict) -> str:
    lines = [f"## {summary['task']}: recipe {summary['recipe']}, "
             f"{' -> '.join(summary['models'])}, seeds {summary['seeds']}",
             "",
             "mean ± sample standard deviation (n - 1) over seeds; PGR of means "
             "averages gold accuracies over seeds first, as the paper does.",
             "",
             "| loss | comparison | supervisor acc | student acc | ceiling acc | "
             "PGR (of mean acc) | PGR per seed [min, max] | PGR 95% CI over "
             "seeds (t) | PGR AUROC (of means) | agreement student/supervisor "
             "| error kappa | misfit KL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for loss, entry in summary["losses"].items():
        for name, comp in entry["comparisons"].items():
            acc = {role: entry["stages"][comp[role]]["accuracy"]
                   for role in ("supervisor", "student", "ceiling")}
            lines.append(
                f"| {loss} | {name} | {_pm(acc['supervisor'])} | "
                f"{_pm(acc['student'])} | {_pm(acc['ceiling'])} | "
                f"{_f(comp['accuracy']['pgr_of_means'])} | "
                f"{_pgr_spread(comp['accuracy']['pgr_per_seed'])} | "
                f"{_interval(comp['accuracy'].get('pgr_seed_interval'))} | "
                f"{_f(comp['auroc']['pgr_of_means'])} | "
                f"{_pm(comp['agreement']['overall'])} | "
                f"{_pm(comp['error_kappa']) if 'error_kappa' in comp else 'n/a'} | "
                f"{_pm(comp['misfit']['kl']) if 'misfit' in comp else 'n/a'} |")
    early = [(loss, name, comp) for loss, entry in summary["losses"].items()
             for name, comp in entry["comparisons"].items()
             if "pgr_early_stopping" in comp]
    if early:
        lines += ["", "Early stopping: PGR of mean accuracies (student accuracy) "
                  "under each selection; the oracle looks at gold test labels "
                  "and is an upper bound, not a method.", "",
                  "| loss | comparison | final | oracle (upper bound) | "
                  "honest (val accuracy) | honest (val AUROC) |",
                  "|---|---|---|---|---|---|"]
        for loss, name, comp in early:
            cells = [f"{_f(sel['pgr_of_means'])} ({_pm(sel['student_accuracy'])})"
                     for sel in (comp["pgr_early_stopping"][k] for k in
                                 ("final", "oracle", "honest_acc", "honest_auroc"))]
            lines.append(f"| {loss} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
