"""Checks before any work: the workdir (and a store), the data files, the
models.

`check(config, workdir)` runs after config validation and before data is
loaded or a model is set up, and writes nothing (a store, config.store, is
tried with a probe object deleted at once). Each problem raises an
`errors.ExpectedError` naming the path (and line) or the config field and
what fixes it. What needs the data or the models themselves (a max_ctx
that cuts most examples to nothing, a class missing after filtering) is
checked while setting up (experiment/setup.py), still before the workdir
is written.
"""
from __future__ import annotations

import os
import tempfile

import ml_collections

from w2s_jax import config as config_lib
from w2s_jax.core import distributed, object_store
from w2s_jax.core.errors import ExpectedError, WorkdirError
from w2s_jax.data import (chess_puzzles, sources, splits, tasks, tfds_tasks,
                          user_tasks)
from w2s_jax.models import registry


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises the first problem of the workdir; or of the data and the
    models, both named in one message when both have one (a machine
    without the hub usually lacks both)."""
    check_workdir(workdir)
    if config.store and distributed.is_primary():
        object_store.open_store(config.store)
    problems = []
    for step in (check_data, check_models):
        try:
            step(config)
        except ExpectedError as err:
            problems.append(err)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise type(problems[0])(f"{len(problems)} problems: " + " ".join(
            f"({i}) {err}" for i, err in enumerate(problems, start=1)))


def check_workdir(workdir: str) -> None:
    """The workdir is a writable directory, or can be created as one. Tried
    by creating (and at once removing) a temporary entry, since permission
    bits do not tell (root ignores them; a read-only mount does not)."""
    if not workdir:
        raise WorkdirError("--workdir is empty; pass a directory for the "
                           "run's stages and results (created if missing)")
    path = os.path.abspath(workdir)
    if os.path.isdir(path):
        probe_dir, create = path, False
    elif os.path.exists(path):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory; "
                           f"pass a directory (it is created if missing)")
    else:
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise WorkdirError(f"--workdir={workdir} cannot be created: "
                               f"{parent} is a file, not a directory")
        probe_dir, create = parent, True
    try:
        probe = tempfile.mkdtemp(prefix=".w2s-write-check-", dir=probe_dir)
        os.rmdir(probe)
    except OSError as err:
        what = (f"cannot be created: {probe_dir} is not writable"
                if create else "is not writable")
        raise WorkdirError(f"--workdir={workdir} {what} ({err.strerror}); "
                           f"pass a directory you can write to") from None


def check_data(config: ml_collections.ConfigDict) -> None:
    """Every mirror file the run will read parses, row by row (the first
    bad line named); without a mirror, the hub can be read (or its cache,
    where the hub is switched off). A file or TFDS task's rows all format
    with config.task_fields."""
    if user_tasks.is_file_task(config.task):
        user_tasks.check_name(config.task)
        user_tasks.checked_rows(user_tasks.path_of(config.task),
                                config.task_fields.to_dict())
        return
    if chess_puzzles.is_chess_task(config.task):
        chess_puzzles.find_engine(config.chess.engine)  # puzzles come later
        return
    if tfds_tasks.is_tfds_task(config.task):
        _, plan, read = tfds_tasks.open_task(
            config.task, config.task_fields.to_dict(),
            config.tfds_data_dir or None)
        for split in sorted(set(plan["splits"].values())):
            read(split)
        return
    data_dir = sources.resolve_data_dir(config.data_dir or None)
    spec = tasks.get_task(config.task)
    if data_dir is None:
        sources.check_hub_dataset(spec)
        return
    plan = splits.plan_splits(spec, data_dir)
    for split in sorted(set(plan["splits"].values())):
        sources.check_mirror_file(spec, sources.mirror_path(spec, split,
                                                            data_dir))


def check_models(config: ml_collections.ConfigDict) -> None:
    """Each model directory holds a config, tokenizer files and safetensors
    weights whose headers match their sizes; each hub model can be had."""
    for field, model in config_lib.model_fields(config):
        registry.check_available(model.name, f"{field}.name")
