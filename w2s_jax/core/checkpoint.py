"""Resumable training: orbax checkpoints of an unfinished stage, and SIGTERM.

A checkpoint holds the train state (params, optimizer state, step) and, as
JSON, the data position (epoch, batch within the epoch) with the losses seen
so far; the batch order is a function of (seed, epoch), so a restored run
continues exactly where the saved one was. Checkpoints live in the stage's
in-progress directory (stages.run_stage) and go when the stage is finished.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# What a shell reports for a process killed by SIGTERM: schedulers treat the
# run as interrupted, not finished.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint."""


class StageCheckpoints:
    """The checkpoints of one stage's training run, in `directory`."""

    def __init__(self, directory: str, every_steps: int):
        self.every_steps = every_steps
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, cleanup_tmp_directories=True))

    def restore(self, state) -> tuple[dict, dict] | None:
        """(state, position) of the latest checkpoint, or None if there is
        none. `state` is the live initial state: its structure, shapes and
        shardings are the restore target."""
        step = self._manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            position=ocp.args.JsonRestore()))
        return restored["state"], restored["position"]

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state, position: dict) -> None:
        """Start saving; device arrays are copied to the host before this
        returns, so the next step may donate them."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            position=ocp.args.JsonSave(position)))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


@contextlib.contextmanager
def sigterm_watch():
    """Yields stop(step) -> bool: whether to save and stop after `step`.

    With one process, a SIGTERM handler sets a flag. With several, every
    process must stop at the same step, so JAX's preemption service (which
    catches SIGTERM itself) picks a step all of them reach.
    """
    if jax.process_count() > 1:
        yield multihost_utils.reached_preemption_sync_point
        return
    if threading.current_thread() is not threading.main_thread():
        # Python lets only the main thread install signal handlers.
        yield lambda step: False
        return
    received = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
    try:
        yield lambda step: received.is_set()
    finally:
        # None: the previous handler was not installed from Python.
        signal.signal(signal.SIGTERM,
                      signal.SIG_DFL if previous is None else previous)
