"""The report's figures in the paper's style, rendered to PNG bytes.

Figures are built on matplotlib's object API with the Agg canvas, never
pyplot, so no global state or display is involved. Each `*_plots` function
returns (figures, notes): a figure is {"file", "title", "caption", "png"};
a note says why a plot was skipped (the store had nothing for it).
Colours: one per weak model (plots 1, 3) or per loss (plot 2); xent is
solid, logconf dashed and other losses dotted/dash-dotted, everywhere.
"""
from __future__ import annotations

import io
import re
from collections import defaultdict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from w2s_jax.report.aggregate import loss_order

_DASHES = {"xent": "-", "logconf": "--"}
_OTHER_DASHES = [":", "-.", (0, (5, 1, 1, 1, 1, 1))]


def _dash(loss: str, losses: list[str]):
    if loss in _DASHES:
        return _DASHES[loss]
    others = [x for x in losses if x not in _DASHES]
    return _OTHER_DASHES[others.index(loss) % len(_OTHER_DASHES)]


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No software/date metadata: the same store gives the same bytes.
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight",
                metadata={"Software": None})
    return buf.getvalue()


def _count(n: float) -> str:
    """A parameter count the way people say it: 17M, 110M, 10k, 1.5B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{suffix}" if value >= 10 else \
                f"{value:.1f}{suffix}"
    return f"{n:.0f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _figure(file, title, caption, fig) -> dict:
    return {"file": file, "title": title, "caption": caption, "png": _png(fig)}


def _losses(rows) -> list[str]:
    return sorted({r["loss"] for r in rows}, key=loss_order)


def _weak_models(rows) -> list[str]:
    """Weak models, smallest first (unknown sizes last, by name)."""
    sizes = {r["weak"]: r["weak_params"] for r in rows}
    return sorted(sizes, key=lambda m: (sizes[m] is None, sizes[m] or 0, m))


def _style_legend(losses, weaks=(), extra=()) -> list[Line2D]:
    handles = [Line2D([], [], color=_colour(i), marker="o", label=f"weak: {w}")
               for i, w in enumerate(weaks)]
    handles += [Line2D([], [], color="grey", linestyle=_dash(x, losses),
                       label=f"loss: {x}") for x in losses]
    return handles + list(extra)


def accuracy_plots(pairs: list[dict]):
    """Plot 1, per task: student accuracy against the strong model's
    ceiling, one line per weak model starting at the weak model's own
    accuracy (on the diagonal)."""
    figures = []
    for task in sorted({p["task"] for p in pairs}):
        rows = [p for p in pairs if p["task"] == task
                and p["student_acc"] is not None
                and p["ceiling_acc"] is not None]
        if not rows:
            continue
        losses, weaks = _losses(rows), _weak_models(rows)
        fig = Figure(figsize=(6.4, 5.6))
        ax = fig.add_subplot()
        values = []
        for i, weak in enumerate(weaks):
            own = [p["weak_acc"] for p in rows if p["weak"] == weak
                   and p["weak_acc"] is not None]
            weak_acc = sum(own) / len(own) if own else None
            for loss in losses:
                line = sorted((p for p in rows if p["weak"] == weak
                               and p["loss"] == loss),
                              key=lambda p: p["ceiling_acc"])
                if not line:
                    continue
                xs = [p["ceiling_acc"] for p in line]
                ys = [p["student_acc"] for p in line]
                if weak_acc is not None:
                    xs, ys = [weak_acc] + xs, [weak_acc] + ys
                ax.plot(xs, ys, color=_colour(i), linestyle=_dash(loss, losses),
                        marker="o", markersize=4)
                values += xs + ys
            if weak_acc is not None:
                ax.plot([weak_acc], [weak_acc], marker="*", markersize=14,
                        color=_colour(i), markeredgecolor="black", zorder=5)
        ceilings = {}
        for p in rows:
            ceilings.setdefault(p["strong"], []).append(p["ceiling_acc"])
        lo, hi = min(values) - 0.02, max(values) + 0.02
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1.2, zorder=1)
        for strong, accs in ceilings.items():
            acc = sum(accs) / len(accs)
            ax.plot([acc], [acc], "ks", markersize=5)
            ax.annotate(strong, (acc, acc), textcoords="offset points",
                        xytext=(6, -10), fontsize=8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_xlabel("strong model's ceiling accuracy (trained on gold)")
        ax.set_ylabel("student test accuracy (trained on weak labels)")
        ax.set_title(f"{task}: weak-to-strong accuracy")
        extra = [Line2D([], [], color="grey", marker="*", markersize=12,
                        markeredgecolor="black", linestyle="",
                        label="weak model's own accuracy"),
                 Line2D([], [], color="black", marker="s", markersize=5,
                        label="strong ceiling (y = x)")]
        ax.legend(handles=_style_legend(losses, weaks, extra), fontsize=8,
                  loc="upper left")
        figures.append(_figure(
            f"accuracy_{_slug(task)}.png", f"{task}: student vs ceiling",
            "Test accuracy of the weak-to-strong student against the strong "
            "model's ceiling, seed-averaged; each line starts at its weak "
            "model's own accuracy (star).", fig))
    notes = [] if figures else ["Student-vs-ceiling accuracy: no w2s runs "
                                "with student and ceiling accuracies."]
    return figures, notes


def pgr_ratio_plots(pairs: list[dict]):
    """Plot 2: PGR of each pair against strong/weak parameter ratio."""
    rows = [p for p in pairs if p["pgr"] is not None and p["param_ratio"]]
    if not rows:
        return [], ["PGR vs parameter ratio: no pair with a PGR and both "
                    "models' parameter counts."]
    losses, tasks = _losses(rows), sorted({p["task"] for p in rows})
    markers = "osD^vP*X"
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for k, loss in enumerate(losses):
        for t, task in enumerate(tasks):
            pts = [p for p in rows if p["loss"] == loss and p["task"] == task]
            if not pts:
                continue
            # Losses side by side (a few % apart on the log axis), not on
            # top of each other.
            shift = 1.08 ** (k - (len(losses) - 1) / 2)
            ax.errorbar([p["param_ratio"] * shift for p in pts],
                        [p["pgr"] for p in pts],
                        yerr=[p["pgr_seed_std"] or 0 for p in pts],
                        color=_colour(k), marker=markers[t % len(markers)],
                        linestyle="", capsize=3)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.set_xlabel("strong / weak parameter count")
    ax.set_ylabel("PGR (of seed-averaged accuracy)")
    ax.set_title("Performance gap recovered vs model size ratio")
    handles = [Line2D([], [], color=_colour(k), marker="o", linestyle="",
                      label=f"loss: {loss}") for k, loss in enumerate(losses)]
    if len(tasks) > 1:
        handles += [Line2D([], [], color="grey", linestyle="",
                           marker=markers[t % len(markers)], label=task)
                    for t, task in enumerate(tasks)]
    ax.legend(handles=handles, fontsize=8)
    excluded = sum(p["pgr"] is None for p in pairs)
    caption = ("One point per pair and loss; error bars: sample std of the "
               "per-seed PGRs.")
    if excluded:
        caption += (f" {excluded} pair(s) whose ceiling does not beat the "
                    "weak model are not shown.")
    return [_figure("pgr_vs_ratio.png", "PGR vs parameter ratio", caption,
                    fig)], []


def agreement_plots(pairs: list[dict]):
    """Plot 3, per task: student-supervisor agreement on the examples the
    weak model got right and wrong, against student size."""
    figures = []
    for task in sorted({p["task"] for p in pairs}):
        rows = [p for p in pairs if p["task"] == task and p["strong_params"]
                and (p["agree_weak_correct"] is not None
                     or p["agree_weak_wrong"] is not None)]
        if not rows:
            continue
        losses, weaks = _losses(rows), _weak_models(rows)
        fig = Figure(figsize=(10, 4.2))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, part, title in zip(axes, ("weak_correct", "weak_wrong"),
                                   ("where the weak model is right",
                                    "where the weak model is wrong")):
            for i, weak in enumerate(weaks):
                for loss in losses:
                    line = sorted((p for p in rows if p["weak"] == weak
                                   and p["loss"] == loss
                                   and p[f"agree_{part}"] is not None),
                                  key=lambda p: p["strong_params"])
                    ax.plot([p["strong_params"] for p in line],
                            [p[f"agree_{part}"] for p in line],
                            color=_colour(i), linestyle=_dash(loss, losses),
                            marker="o", markersize=4)
            ax.set_xscale("log")
            # Ticks at the students' own sizes: log-axis minor labels
            # (3x10^7, 4x10^7...) overlap and name no model.
            sizes = sorted({p["strong_params"] for p in rows})
            ax.set_xticks(sizes, [_count(n) for n in sizes])
            ax.minorticks_off()
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(title)
            ax.set_xlabel("student (strong model) parameters")
        axes[0].set_ylabel("agreement of student with supervisor")
        axes[1].legend(handles=_style_legend(losses, weaks), fontsize=8)
        fig.suptitle(f"{task}: student-supervisor agreement")
        figures.append(_figure(
            f"agreement_{_slug(task)}.png", f"{task}: agreement",
            "Fraction of gold test examples where the student predicts what "
            "its weak supervisor predicts, seed-averaged.", fig))
    notes = [] if figures else ["Agreement: no w2s runs with agreement "
                                "rates and the student's parameter count."]
    return figures, notes


def bootstrap_plots(chains: list[dict]):
    """Plot 4, per task: accuracy along each bootstrapping chain, with the
    direct student and the ceiling as reference lines."""
    figures = []
    for task in sorted({c["task"] for c in chains}):
        rows = [c for c in chains if c["task"] == task and c["chain"]]
        if not rows:
            continue
        fig = Figure(figsize=(max(5.0, 4.6 * len(rows)), 4.4))
        axes = fig.subplots(1, len(rows), squeeze=False)[0]
        for ax, chain in zip(axes, rows):
            links = [e for e in chain["chain"] if e["acc"] is not None]
            xs = list(range(1, len(links) + 1))
            ax.errorbar(xs, [e["acc"] for e in links],
                        yerr=[e["acc_std"] or 0 for e in links], marker="o",
                        capsize=3, color="C0", label="chain (weak → ...)")
            for ref, style, colour in (("direct", "--", "C1"),
                                       ("ceiling", "-", "black")):
                if chain[ref]["acc"] is not None:
                    ax.axhline(chain[ref]["acc"], color=colour,
                               linestyle=style, label=f"{ref}: "
                               f"{chain[ref]['model']} "
                               f"({chain[ref]['acc']:.3f})")
            ax.set_xticks(xs, [f"{e['stage']}\n{e['model']}" for e in links],
                          fontsize=8)
            ax.set_xlim(0.6, len(links) + 0.4)
            ax.grid(alpha=0.3)
            ax.set_ylabel("test accuracy (gold)")
            ax.set_title(f"loss {chain['loss']}, {chain['n_seeds']} seed(s)",
                         fontsize=10)
            ax.legend(fontsize=8, loc="lower right")
        fig.suptitle(f"{task}: bootstrapping chain by link")
        figures.append(_figure(
            f"bootstrap_{_slug(task)}.png", f"{task}: bootstrapping",
            "Seed-averaged accuracy of each link of the chain (each trained "
            "on the previous link's labels); error bars: sample std over "
            "seeds.", fig))
    notes = [] if figures else ["Bootstrapping chain: no bootstrap runs."]
    return figures, notes


def training_curve_plots(records: list[dict]):
    """Plot 5, per task: training loss by logged step of each stage of one
    run per (pair, loss): the run with the lowest seed."""
    chosen = {}
    for r in sorted(records, key=lambda r: r["seed"], reverse=True):
        curves = r.get("loss_curves") or {}
        if r["recipe"] == "w2s" and any(curves.values()):
            chosen[(r["task"], r["models"][0], r["models"][-1],
                    r["loss"])] = r
    by_task = defaultdict(list)
    for key in chosen:
        by_task[key[0]].append(key)
    figures = []
    for task, keys in sorted(by_task.items()):
        pair_keys = sorted({k[1:3] for k in keys}, key=lambda wk: _size_key(
            chosen, task, wk))
        losses = sorted({k[3] for k in keys}, key=loss_order)
        fig = Figure(figsize=(4.2 * len(losses), 2.6 * len(pair_keys)))
        axes = fig.subplots(len(pair_keys), len(losses), squeeze=False)
        for row, (weak, strong) in enumerate(pair_keys):
            for col, loss in enumerate(losses):
                ax = axes[row][col]
                run = chosen.get((task, weak, strong, loss))
                if run is None:
                    ax.set_axis_off()
                    continue
                stage_models = run.get("stage_models") or {}
                for stage, curve in run["loss_curves"].items():
                    if curve:
                        model = stage_models.get(stage)
                        ax.plot(range(1, len(curve) + 1), curve, label=(
                            f"{stage} ({model})" if model else stage))
                ax.set_title(f"{weak} → {strong}, {loss}, seed {run['seed']}",
                             fontsize=9)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
                ax.set_xlabel("logged step", fontsize=8)
                ax.set_ylabel("training loss", fontsize=8)
        fig.suptitle(f"{task}: training curves", y=1.0)
        fig.tight_layout()
        figures.append(_figure(
            f"training_{_slug(task)}.png", f"{task}: training curves",
            "Training loss at each logged step of every stage, for the "
            "lowest-seed run of each pair and loss.", fig))
    notes = [] if figures else ["Training curves: no w2s run logged a "
                                "training loss."]
    return figures, notes


def _size_key(chosen, task, weak_strong):
    """Pairs ordered by strong, then weak parameter count."""
    weak, strong = weak_strong
    params = next(r.get("model_params") or {} for k, r in chosen.items()
                  if k[:3] == (task, weak, strong))
    return (params.get(strong) or 0, params.get(weak) or 0, strong, weak)


def all_plots(data: dict, records: list[dict]):
    """Every figure the store supports, and a note for each it does not."""
    figures, notes = [], []
    for made, skipped in (accuracy_plots(data["pairs"]),
                          pgr_ratio_plots(data["pairs"]),
                          agreement_plots(data["pairs"]),
                          bootstrap_plots(data["bootstrap"]),
                          training_curve_plots(records)):
        figures += made
        notes += skipped
    return figures, notes
