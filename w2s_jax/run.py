"""The one door: config -> runs (seeds x losses) -> recipe -> results.

`run(config, workdir)` is what `python -m w2s_jax.main`, the Colab notebook
and the tests call. Each (seed, loss) of `config.seeds` x `config.losses` is
one run of `config.recipe` with its own results file; stages shared between
runs come from the stage cache, so they are trained once. Several runs also
get a summary with the seed spread, named by everything that distinguishes
the sweep, so two sweeps in one workdir never overwrite each other.
"""
from __future__ import annotations

import hashlib
import json

import ml_collections

from w2s_jax import config as config_lib
from w2s_jax.core import console
from w2s_jax.core.progress import log
from w2s_jax.experiment import preflight, setup
from w2s_jax.experiment.recipes import get_recipe
from w2s_jax.report import results as results_lib
from w2s_jax.report import summary as summary_lib


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Every run of the config; returns the results of a single run, or the
    summary of several.

    Everything that can be checked before any work is checked first (the
    config, the workdir, the data files, the model directories), and
    nothing is written to the workdir until the first run's data and models
    are set up; a failure until then leaves the workdir as it was.
    """
    config_lib.validate(config)
    preflight.check(config, workdir)
    seeds = config_lib.sweep_values(config.seeds, int, "config.seeds") or [config.seed]
    loss_names = (config_lib.sweep_values(config.losses, str, "config.losses")
                  or [config.loss])
    runs = {loss: [run_one(_single(config, seed, loss), workdir)
                   for seed in seeds] for loss in loss_names}
    if len(seeds) == 1 and len(loss_names) == 1:
        return runs[loss_names[0]][0]
    summary = summary_lib.summarize(runs)
    path = results_lib.write_named(workdir, sweep_name(config, seeds, loss_names),
                                   summary, summary_lib.summary_table(summary))
    log(summary_lib.summary_table(summary))
    log(f"[results] {path}")
    return summary


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """One seed and one loss of the config's recipe: stages, results file."""
    recipe = get_recipe(config.recipe)
    log(f"[run] recipe {config.recipe}, task {config.task}, loss "
        f"{config.loss}, seed {config.seed}")
    ctx = setup.build(config, workdir)
    console.open_log_file()  # the workdir's first write (if logs are deferred)
    output = recipe(ctx)
    results = results_lib.build_results(ctx=ctx, output=output)
    path = results_lib.write_results(results, workdir)
    log(results_lib.summary_table(results))
    log(f"[results] {path}")
    return results


def table(out: dict) -> str:
    """The readable table of what `run` returned (one run or a summary)."""
    if "losses" in out and "runs" in next(iter(out["losses"].values())):
        return summary_lib.summary_table(out)
    return results_lib.summary_table(out)


def sweep_name(config, seeds: list[int], loss_names: list[str]) -> str:
    """Task, recipe, models, seeds, losses, and a hash of every other
    setting that changes results."""
    rest = json.loads(config.to_json())
    for key in ("seed", "seeds", "loss", "losses", *results_lib.RUN_ONLY_KEYS):
        rest.pop(key, None)
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()
    models = "-to-".join(m.name for m in config_lib.model_list(config))
    return (f"sweep_{config.task}_{config.recipe}_{models}_seeds"
            f"{'-'.join(map(str, seeds))}_{'-'.join(loss_names)}_{digest[:8]}")


def _single(config, seed: int, loss: str):
    config = config.copy_and_resolve_references()
    config.seed, config.loss, config.seeds, config.losses = seed, loss, "", ""
    return config
