"""Seed-averaged results from the store's records, as plain data and tables.

The paper's convention: gold accuracies are averaged over seeds first and
PGR is computed from those means, (student - weak) / (ceiling - weak). A
pair whose mean ceiling does not beat its mean weak accuracy has no PGR
(metrics.pgr gives None); it is left out of the medians and counted, so a
median never hides how many pairs it skipped. The per-seed PGRs only give
the spread. ± is the sample std over seeds (n - 1), undefined for one seed.

`aggregate` returns lists of dicts (tables.json); `tables` turns them into
display tables (title, headers, rows of strings) that `markdown` and the
HTML page render.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict

import numpy as np

from w2s_jax.report import metrics

EXCLUDED_REASON = "ceiling does not beat weak"


def aggregate(records: list[dict]) -> dict:
    """All report data from the store's run records."""
    groups = defaultdict(list)
    w2s = [r for r in records if r["recipe"] == "w2s"]
    settings = _settings(w2s)
    for r, setting in zip(w2s, settings):
        key = (r["task"], r["models"][0], r["models"][-1], r["loss"], setting)
        groups[key].append(r)
    pairs = sorted((_pair(key, runs) for key, runs in groups.items()),
                   key=_pair_order)
    return {"runs": len(records), "pairs": pairs,
            "medians": medians(pairs), "bootstrap": bootstrap(records)}


# Config fields that never make two runs different experiments.
_SAME_EXPERIMENT = {"seed", "seeds", "loss", "losses", "grid", "logs",
                    "checkpoint_every_steps", "distributed", "store"}


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in (config or {}).items():
        if not prefix and key in _SAME_EXPERIMENT:
            continue
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def _settings(records: list[dict]) -> list[str]:
    """Per record, what sets its experiment apart from the others of its
    (task, weak, strong, loss), as "field=value, ..." ("" if nothing):
    runs that differ in another setting (a grid's points, an earlier run
    in the workdir with another lr) are separate rows, never extra seeds."""
    flats = [_flat(r.get("config")) for r in records]
    groups = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r["task"], r["models"][0], r["models"][-1], r["loss"])].append(i)
    out = [""] * len(records)
    for members in groups.values():
        keys = sorted({k for i in members for k in flats[i]})
        differ = [k for k in keys
                  if len({flats[i].get(k) for i in members}) > 1]
        for i in members:
            out[i] = ", ".join(f"{k}={flats[i].get(k)}" for k in differ)
    return out


def loss_order(loss: str) -> tuple:
    """xent, then logconf (the paper's two), then the rest by name."""
    return ({"xent": 0, "logconf": 1}.get(loss, 2), loss)


def _pair_order(row: dict) -> tuple:
    return (row["task"], row["strong_params"] or 0, row["weak_params"] or 0,
            row["strong"], row["weak"], loss_order(row["loss"]))


def spread(values) -> dict:
    """Mean, sample std, min, max and count of the defined values.

    (report/summary.py has the same for one sweep, but importing it loads
    jax; a report needs only numpy.)
    """
    v = np.asarray([x for x in values if _finite(x)], np.float64)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pgr(accuracies) -> float | None:
    """PGR of (weak, student, ceiling); None where one is missing or the
    ceiling does not beat weak."""
    return metrics.pgr(*accuracies) if all(map(_finite, accuracies)) else None


def _accuracy(record: dict, stage: str):
    return (record["gold_test"].get(stage) or {}).get("accuracy")


def _roles(record: dict, comparison: str, default: tuple) -> tuple:
    """(supervisor, student, ceiling) stage names of a comparison."""
    comp = (record.get("comparisons") or {}).get(comparison) or {}
    return tuple(comp.get(role, d) for role, d in
                 zip(("supervisor", "student", "ceiling"), default))


def _pair(key: tuple, runs: list[dict]) -> dict:
    task, weak, strong, loss, setting = key
    runs = sorted(runs, key=lambda r: r["seed"])
    roles = [_roles(r, "w2s", ("weak", "w2s", "ceiling")) for r in runs]
    acc = {name: spread([_accuracy(r, role[i]) for r, role in zip(runs, roles)])
           for i, name in enumerate(("weak", "student", "ceiling"))}
    means = [s["mean"] for s in acc.values()]
    pgr = _pgr(means)  # of the seed means: the paper's convention
    seed_pgr = spread([_pgr([_accuracy(r, s) for s in role])
                       for r, role in zip(runs, roles)])
    params = runs[-1].get("model_params") or {}
    agreement = [((r.get("comparisons") or {}).get("w2s") or {}).get(
        "agreement") or {} for r in runs]
    row = {"task": task, "weak": weak, "strong": strong, "loss": loss,
           "setting": setting,
           "n_seeds": len(runs), "seeds": [r["seed"] for r in runs],
           "weak_params": params.get(weak), "strong_params": params.get(strong),
           "pgr": pgr,
           "excluded": None if pgr is not None else (
               EXCLUDED_REASON if all(map(_finite, means))
               else "accuracy missing")}
    row["param_ratio"] = (row["strong_params"] / row["weak_params"]
                          if row["weak_params"] and row["strong_params"]
                          else None)
    for name, s in acc.items():
        row[f"{name}_acc"], row[f"{name}_acc_std"] = s["mean"], s["std"]
    for stat in ("mean", "std", "min", "max", "n"):
        row[f"pgr_seed_{stat}"] = seed_pgr[stat]
    for part in ("overall", "weak_correct", "weak_wrong"):
        row[f"agree_{part}"] = spread([a.get(part) for a in agreement])["mean"]
    return row


def medians(pairs: list[dict]) -> list[dict]:
    """Median PGR per loss over the included pairs, over all tasks
    (task "all") and per task, with how many pairs were in and out."""
    out = []
    for task in ["all"] + sorted({p["task"] for p in pairs}):
        rows = [p for p in pairs if task in ("all", p["task"])]
        for loss in sorted({p["loss"] for p in rows}, key=loss_order):
            values = [p["pgr"] for p in rows
                      if p["loss"] == loss and p["pgr"] is not None]
            out.append({
                "task": task, "loss": loss,
                "median_pgr": float(np.median(values)) if values else None,
                "n_pairs": len(values),
                "n_excluded": sum(p["loss"] == loss and p["pgr"] is None
                                  for p in rows)})
    return out


def _link_number(stage: str) -> int:
    """weak is link 1; linkK is link K."""
    match = re.fullmatch(r"link(\d+)", stage)
    return int(match.group(1)) if match else 1


def bootstrap(records: list[dict]) -> list[dict]:
    """Each bootstrapping chain (task, models, loss), seed-averaged: the
    accuracy of every link, of the direct student and of the ceiling, and
    each comparison's PGR of the means."""
    groups = defaultdict(list)
    for r in records:
        if r["recipe"] == "bootstrap":
            groups[(r["task"], tuple(r["models"]), r["loss"])].append(r)
    out = []
    for (task, models, loss), runs in sorted(groups.items()):
        stage_models = runs[0].get("stage_models") or {}
        stages = sorted((s for s in stage_models
                         if s == "weak" or re.fullmatch(r"link\d+", s)),
                        key=_link_number)
        mean = {}

        def entry(stage):
            s = spread([_accuracy(r, stage) for r in runs])
            mean[stage] = s["mean"]
            return {"stage": stage, "model": stage_models.get(stage),
                    "acc": s["mean"], "acc_std": s["std"]}

        row = {"task": task, "models": list(models), "loss": loss,
               "n_seeds": len(runs), "seeds": sorted(r["seed"] for r in runs),
               "chain": [entry(s) for s in stages],
               "direct": entry("direct"), "ceiling": entry("ceiling")}
        row["pgr"] = {}
        for name in sorted(runs[0].get("comparisons") or {}):
            row["pgr"][name] = _pgr([mean.get(s) for s in
                                     _roles(runs[0], name, (None,) * 3)])
        out.append(row)
    return out


# ---- display tables ----------------------------------------------------

def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pm(mean, std) -> str:
    return _num(mean) if std is None or mean is None else \
        f"{mean:.3f} ± {std:.3f}"


def tables(data: dict) -> list[dict]:
    """Display tables: {"title", "note", "headers", "rows"} of strings."""
    out = [_median_table(data["medians"]), _pgr_table(data["pairs"]),
           _accuracy_table(data["pairs"])]
    if data["bootstrap"]:
        out.append(_bootstrap_table(data["bootstrap"]))
    return out


def _median_table(rows: list[dict]) -> dict:
    losses = sorted({r["loss"] for r in rows}, key=loss_order)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cell = {(r["task"], r["loss"]): r for r in rows}

    def fmt(r):
        if r is None:
            return ""
        text = f"{_num(r['median_pgr'])} ({r['n_pairs']} pairs"
        return text + (f", {r['n_excluded']} excluded)" if r["n_excluded"]
                       else ")")
    return {"title": "Median PGR per loss",
            "note": "Over weak-strong pairs; PGR from seed-averaged gold "
                    "accuracies. Pairs whose ceiling does not beat the weak "
                    "model are excluded and counted.",
            "headers": ["task"] + losses,
            "rows": [[t] + [fmt(cell.get((t, loss))) for loss in losses]
                     for t in tasks]}


def _pgr_table(pairs: list[dict]) -> dict:
    losses = sorted({p["loss"] for p in pairs}, key=loss_order)
    by_pair = defaultdict(dict)
    for p in pairs:
        by_pair[(p["task"], p["weak"], _strong(p), p["param_ratio"])][
            p["loss"]] = p

    def fmt(p):
        if p is None:
            return ""
        if p["pgr"] is None:
            return f"excluded: {p['excluded']} (n={p['n_seeds']})"
        spread_text = (f"; seeds {_pm(p['pgr_seed_mean'], p['pgr_seed_std'])}"
                       if p["n_seeds"] > 1 else "")
        return f"{p['pgr']:.3f} (n={p['n_seeds']}{spread_text})"
    return {"title": "PGR per pair",
            "note": "PGR of the seed means; 'seeds' is the mean ± sample "
                    "std of the per-seed PGRs.",
            "headers": ["task", "weak", "strong", "params ×"] + losses,
            "rows": [[t, w, s, "n/a" if ratio is None else f"{ratio:,.3g}"
                      if ratio < 100 else f"{ratio:,.0f}"]
                     + [fmt(cells.get(loss)) for loss in losses]
                     for (t, w, s, ratio), cells in by_pair.items()]}


def _strong(pair: dict) -> str:
    """The strong model, with the settings that set its row apart."""
    return (f"{pair['strong']} ({pair['setting']})" if pair["setting"]
            else pair["strong"])


def _accuracy_table(pairs: list[dict]) -> dict:
    return {"title": "Gold test accuracy per pair and loss",
            "note": "Mean ± sample std over seeds.",
            "headers": ["task", "weak", "strong", "loss", "seeds", "weak acc",
                        "student acc", "ceiling acc", "PGR",
                        "seed PGR min..max"],
            "rows": [[p["task"], p["weak"], _strong(p), p["loss"],
                      str(p["n_seeds"]), _pm(p["weak_acc"], p["weak_acc_std"]),
                      _pm(p["student_acc"], p["student_acc_std"]),
                      _pm(p["ceiling_acc"], p["ceiling_acc_std"]),
                      _num(p["pgr"]) if p["pgr"] is not None else "excluded",
                      f"{_num(p['pgr_seed_min'])}..{_num(p['pgr_seed_max'])}"]
                     for p in pairs]}


def _bootstrap_table(chains: list[dict]) -> dict:
    names = sorted({n for c in chains for n in c["pgr"]})
    return {"title": "Bootstrapping chains",
            "note": "Seed-averaged gold test accuracy of each link (weak "
                    "first), the direct student and the ceiling.",
            "headers": ["task", "loss", "seeds", "chain accuracy", "direct",
                        "ceiling"] + [f"PGR {n}" for n in names],
            "rows": [[c["task"], c["loss"], str(c["n_seeds"]),
                      " → ".join(f"{e['model']} {_num(e['acc'])}"
                                 for e in c["chain"]),
                      _num(c["direct"]["acc"]), _num(c["ceiling"]["acc"])]
                     + [_num(c["pgr"].get(n)) for n in names]
                     for c in chains]}


def markdown(table: dict) -> str:
    """A display table as a titled GitHub markdown table."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|")
                                 for c in cells) + " |"
    lines = [f"### {table['title']}", ""]
    if table.get("note"):
        lines += [table["note"], ""]
    lines += [line(table["headers"]),
              line(["---"] * len(table["headers"]))]
    lines += [line(row) for row in table["rows"]]
    return "\n".join(lines) + "\n"
