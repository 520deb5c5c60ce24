"""Training curves for TensorBoard and Weights & Biases, neither required.

A writer takes `scalars(step, {name: value})` and `close()`. `for_stage`
builds the one a training stage writes to, from `config.logs`:

* TensorBoard (`logs.tensorboard`, on by default): event files in
  `<workdir>/tensorboard/<stage name>-<stage key>/`, one TensorBoard run per
  stage, written with tensorboardX (no TensorFlow; `pip install -e
  ".[logs]"`). Without tensorboardX this writer is skipped: the console
  shows progress as always, and the log file gets one info line.
* Weights & Biases (`logs.wandb`, off by default): one W&B run per stage in
  project `logs.wandb_project`. wandb is imported only then; if it is not
  installed, or its run cannot start (say, not logged in), one warning and
  training goes on without it.

Only process 0 writes; other processes get a writer that does nothing. A
resumed stage appends to the same directory, so its curve goes on from the
resumed step (steps between the checkpoint and the interruption show twice).
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

from w2s_jax.core import console, distributed

_logger = logging.getLogger(__name__)
# Each missing optional backend is reported once per process, not per stage.
_reported: set[str] = set()


class MetricWriter:
    """Writes nothing: the interface, and the writer when no backend is on."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardWriter(MetricWriter):
    """Event files in `log_dir` (tensorboardX, imported by the caller's
    check `tensorboard_available`)."""

    def __init__(self, log_dir: str):
        from tensorboardX import SummaryWriter
        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir)

    def scalars(self, step, values):
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), global_step=int(step))

    def close(self):
        self._writer.close()


class WandbWriter(MetricWriter):
    """One W&B run; `run` is what wandb.init returned."""

    def __init__(self, run):
        self._run = run

    def scalars(self, step, values):
        self._run.log({k: float(v) for k, v in values.items()}, step=int(step))

    def close(self):
        self._run.finish()


class MultiWriter(MetricWriter):
    """Every value to each of `writers`."""

    def __init__(self, writers: list[MetricWriter]):
        self.writers = list(writers)

    def scalars(self, step, values):
        for writer in self.writers:
            writer.scalars(step, values)

    def close(self):
        for writer in self.writers:
            writer.close()


def tensorboard_available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def stage_log_dir(workdir: str, name: str, key: str) -> str:
    return os.path.join(workdir, "tensorboard", f"{name}-{key}")


def for_stage(logs, workdir: str, name: str, key: str) -> MetricWriter:
    """The writer of stage `name`-`key`, from `logs` (config.logs)."""
    if not distributed.is_primary():
        return MetricWriter()
    writers = []
    if logs.tensorboard:
        if tensorboard_available():
            writers.append(TensorBoardWriter(stage_log_dir(workdir, name, key)))
        else:
            _report_once("tensorboardX", logging.INFO,
                         "config.logs.tensorboard is on but tensorboardX is "
                         "not installed (pip install -e \".[logs]\"): no "
                         "TensorBoard event files are written")
    if logs.wandb:
        run = _wandb_run(logs.wandb_project, workdir, name, key)
        if run is not None:
            writers.append(WandbWriter(run))
    return MultiWriter(writers) if writers else MetricWriter()


def _wandb_run(project: str, workdir: str, name: str, key: str):
    """wandb.init's run, or None (with one warning) when wandb is missing
    or cannot start."""
    try:
        import wandb
    except ImportError:
        _report_once("wandb", logging.WARNING,
                     "config.logs.wandb is on but wandb is not installed "
                     "(pip install wandb); training goes on without W&B")
        return None
    try:
        return wandb.init(project=project, name=f"{name}-{key}",
                          group=os.path.basename(os.path.abspath(workdir)),
                          dir=workdir, config={"stage": name, "key": key})
    except Exception as err:  # not logged in, no network: training goes on
        _report_once("wandb-init", logging.WARNING,
                     f"W&B run for stage {name} did not start ({err}); "
                     f"training goes on without W&B")
        return None


def _report_once(what: str, level: int, message: str) -> None:
    if what in _reported:
        return
    _reported.add(what)
    if level >= logging.WARNING:
        _logger.log(level, message)
    else:  # the log file only: the console stays as it was
        console.to_log_file(level, message)
