"""A grid of runs in one command, optionally split over shards.

A config declares a grid with `config.grid` (w2s_jax/config.py):

- `ladder`: model names, weakest first; every (weak, strong) pair of them
  with weak before strong is a point (each model keeps config.weak's or
  config.strong's other settings);
- `tasks`: task names; every point runs on each;
- `points`: a list of override dicts ({"weak.name": ..., "loss_params.
  alpha_max": ...}), each a point, the way big_vision and the flax
  examples list sweeps (combined with `tasks` when both are set).

Every point then runs each seed of `config.seeds` and loss of
`config.losses`: a unit is one (point, seed, loss) run. Units are ordered
by task, seed and weak model, so that runs sharing a weak model's labels
sit together, and `--shard=i/n` takes every n-th unit from the i-th, a
deterministic, balanced share. Every finished stage is reused from the
workdir's stage cache (a weak model's labels and a ceiling serve every pair
and loss that uses them), so a rerun after an interruption, or with one more
loss, trains only what is new. Shards share the workdir: a unit that needs
a stage another process is computing is put back at the end of the queue
(stages.no_waiting), and the shard goes on with other units, coming back to
it; a stage's claim makes sure it is computed once. Shards on machines that
share no filesystem share a bucket instead (config.store): claims, stages
and the result store live there, each shard keeping its own workdir.
"""
from __future__ import annotations

import collections
import time

import ml_collections

from w2s_jax import config as config_lib
from w2s_jax.core import stages
from w2s_jax.core.errors import UsageError
from w2s_jax.core.progress import format_duration, log


def is_grid(config: ml_collections.ConfigDict) -> bool:
    grid = config.grid
    return bool(grid.ladder or grid.tasks or grid.points)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = -1
    if not 0 <= index < count:
        raise UsageError(f"--shard={text!r} must be i/n with 0 <= i < n, e.g. "
                         f"--shard=0/4 for the first of four shards")
    return index, count


def points(config: ml_collections.ConfigDict) -> list[dict]:
    """The grid's points: override dicts (module docstring)."""
    grid = config.grid
    ladder = config_lib.sweep_values(grid.ladder, str, "config.grid.ladder")
    tasks = config_lib.sweep_values(grid.tasks, str, "config.grid.tasks")
    if len(ladder) == 1:
        raise UsageError(f"config.grid.ladder={grid.ladder!r} needs at least "
                         f"two models, weakest first, e.g. 'gpt2,gpt2-medium'")
    found = [{}]
    if ladder:
        found = [{"weak.name": weak, "strong.name": strong}
                 for i, weak in enumerate(ladder) for strong in ladder[i + 1:]]
    if grid.points:
        found = [{**a, **dict(b)} for a in found for b in grid.points]
    if tasks:
        found = [{**point, "task": task} for task in tasks for point in found]
    return found


def apply(config: ml_collections.ConfigDict, point: dict) -> ml_collections.ConfigDict:
    """A copy of the config with the point's dotted overrides, and no grid."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.grid = config_lib.base_config().grid
    for dotted, value in point.items():
        *parents, leaf = dotted.split(".")
        node = out
        for i, part in enumerate(parents + [leaf]):
            if part not in node:
                where = ".".join(["config", *parents[:i]])
                raise UsageError(f"config.grid point {point}: {where} has no "
                                 f"field {part!r}; fields: "
                                 f"{', '.join(sorted(node.keys()))}")
            if i < len(parents):
                node = node[part]
        node[leaf] = value
    return out


def units(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """Every single run of the grid, in the shared-stages order."""
    out = []
    for point in points(config):
        base = apply(config, point)
        seeds = (config_lib.sweep_values(base.seeds, int, "config.seeds")
                 or [base.seed])
        losses = (config_lib.sweep_values(base.losses, str, "config.losses")
                  or [base.loss])
        for seed in seeds:
            for loss in losses:
                unit = base.copy_and_resolve_references()
                unit.seed, unit.loss, unit.seeds, unit.losses = seed, loss, "", ""
                out.append(unit)
    return sorted(out, key=lambda c: (c.task, c.seed, c.weak.name,
                                      c.strong.name, c.loss))


def label(unit: ml_collections.ConfigDict) -> str:
    models = " -> ".join(m.name for m in config_lib.model_list(unit))
    return f"{unit.task} {models} {unit.loss} seed {unit.seed}"


def run(mine: list, run_one, workdir: str, poll_s: float,
        max_wait_s: float = 60.0) -> list[dict]:
    """Runs each unit with `run_one(unit, workdir)`; a unit whose stage is
    busy elsewhere goes back in the queue; returns the results in order.

    When every unit left is busy, the shard sleeps before the next round,
    doubling the pause from `poll_s` up to `max_wait_s`: a retry sets the
    unit up again (data, tokens, finished stages) before it reaches the
    busy stage, which should not happen every second for hours."""
    queue = collections.deque(enumerate(mine))
    results: dict[int, dict] = {}
    busy_in_a_row, pause, start = 0, poll_s, time.monotonic()
    told = set()  # units whose wait was reported
    while queue:
        position, unit = queue.popleft()
        if position not in told:
            log(f"[grid] unit {len(results) + 1}/{len(mine)}: {label(unit)}")
        try:
            with stages.no_waiting():
                results[position] = run_one(unit, workdir)
            busy_in_a_row, pause = 0, poll_s
        except stages.StageBusy as busy:
            queue.append((position, unit))
            busy_in_a_row += 1
            if position not in told:
                told.add(position)
                log(f"[grid] {busy}; moving on, back to it later")
            if busy_in_a_row >= len(queue):
                time.sleep(pause)  # every unit left waits on another process
                busy_in_a_row, pause = 0, min(2 * pause, max_wait_s)
    log(f"[grid] {len(mine)} runs done in "
        f"{format_duration(time.monotonic() - start)}")
    return [results[i] for i in range(len(mine))]
