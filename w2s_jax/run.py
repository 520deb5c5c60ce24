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

import jax
import ml_collections

from w2s_jax import config as config_lib
from w2s_jax.core import compile_cache, console, stages
from w2s_jax.core.progress import log
from w2s_jax.experiment import grid, preflight, setup
from w2s_jax.experiment.recipes import get_recipe
from w2s_jax.report import publish
from w2s_jax.report import results as results_lib
from w2s_jax.report import summary as summary_lib


def run(config: ml_collections.ConfigDict, workdir: str,
        shard: tuple[int, int] | None = None) -> dict:
    """Every run of the config; returns the results of a single run, or the
    summary of several, or for a grid (or a shard, `(i, n)`) the results of
    each of its runs ({"runs": [...]}).

    Everything that can be checked before any work is checked first (the
    config, the workdir, the data files, the model directories), and
    nothing is written to the workdir until the first run's data and models
    are set up; a failure until then leaves the workdir as it was.
    """
    compile_cache.enable()
    if grid.is_grid(config) or shard is not None:
        # Each unit is validated: the base config's own task or models may
        # be ones the grid replaces.
        return run_grid(config, workdir, shard or (0, 1))
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
    with matmul_precision(config.matmul_precision):
        ctx = setup.build(config, workdir)
        console.open_log_file()  # the workdir's first write (if logs are deferred)
        output = recipe(ctx)
    results = results_lib.build_results(ctx=ctx, output=output)
    path = results_lib.write_results(results, workdir)
    publish.publish(results, ctx, results_lib.run_name(results))
    log(results_lib.summary_table(results))
    log(f"[results] {path}")
    return results


def matmul_precision(name: str):
    """The context a run's steps are traced in, JAX's default matmul
    precision as the config says: "default" is JAX's own (None, whatever
    JAX_DEFAULT_MATMUL_PRECISION an environment sets, so the config alone
    decides); "bfloat16" is named by stage keys (stages.stage_key) and
    applied to the projections by models/dense_dot.py on every platform
    (XLA:CPU itself would ignore it)."""
    return jax.default_matmul_precision(None if name == "default" else name)


def run_grid(config: ml_collections.ConfigDict, workdir: str,
             shard: tuple[int, int]) -> dict:
    """This shard's runs of the grid (experiment/grid.py), each checked
    before any runs; a table of every run at the end."""
    index, count = shard
    every = grid.units(config)
    mine = every[index::count]
    checked = set()
    for unit in mine:
        config_lib.validate(unit)
        # Units that differ only in seed and loss read the same data and
        # models: one preflight serves them all.
        key = sweep_name(unit, [], [])
        if key not in checked:
            checked.add(key)
            preflight.check(unit, workdir)
    log(f"[grid] {len(every)} runs in the grid"
        + (f"; shard {index}/{count} runs {len(mine)}" if count > 1 else ""))
    runs = grid.run(mine, run_one, workdir,
                    poll_s=stages.ClaimTiming.from_env().poll_s)
    out = {"runs": runs}
    log(table(out))
    if config.store:
        log(f"[results] every run is in {config.store}; tables and plots: "
            f"python -m w2s_jax.report --store={config.store} "
            f"--out={workdir}/report")
    else:
        log(f"[results] every run is in {publish.store_dir(workdir)}; tables "
            f"and plots: python -m w2s_jax.report --workdir={workdir}")
    return out


def table(out: dict) -> str:
    """The readable table of what `run` returned (one run, a summary, or
    a grid's runs)."""
    if "runs" in out:
        return results_lib.runs_table(out["runs"])
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
