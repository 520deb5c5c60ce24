"""Multi-host runs: jax.distributed setup, per-process batch rows, barriers.

Every process runs the same program on the same deterministic batch order;
each builds only its own rows of a batch (`process_rows`), and only process
0 writes files (stage records, results), which the others read after a
barrier. The workdir must therefore be shared by all hosts (NFS,
Filestore), as orbax's multi-host checkpoints also require; not gcsfuse,
whose directory renames are not atomic, which stage claims rely on
(core/stages.py).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from w2s_jax.core import sharding
from w2s_jax.core.errors import UsageError
from w2s_jax.core.progress import log

ENV_ENABLED = "W2S_DISTRIBUTED"
ENV_COORDINATOR = "W2S_COORDINATOR"
ENV_NUM_PROCESSES = "W2S_NUM_PROCESSES"
ENV_PROCESS_ID = "W2S_PROCESS_ID"


def initialize(config) -> None:
    """Join the multi-host job the config or environment describes, if any.

    Must run before anything touches devices. The config's fields win over
    the environment's.
    """
    cfg = config.distributed
    address = cfg.coordinator_address or os.environ.get(ENV_COORDINATOR, "")
    if address:
        num_processes = _setting(cfg.num_processes, 0, ENV_NUM_PROCESSES,
                                 "num_processes")
        process_id = _setting(cfg.process_id, -1, ENV_PROCESS_ID, "process_id")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UsageError(
                f"a distributed run with coordinator {address!r} needs "
                f"num_processes >= 1 and 0 <= process_id < num_processes, got "
                f"num_processes={num_processes}, process_id={process_id}")
        jax.distributed.initialize(coordinator_address=address,
                                   num_processes=num_processes,
                                   process_id=process_id)
    elif cfg.enabled or os.environ.get(ENV_ENABLED, "") in ("1", "true"):
        # No arguments: JAX detects the cluster (Cloud TPU, SLURM, ...).
        jax.distributed.initialize()
    else:
        return
    log(f"[distributed] process {jax.process_index()} of "
        f"{jax.process_count()}: {jax.local_device_count()} of "
        f"{jax.device_count()} devices")


def _setting(value: int, unset: int, env: str, field: str) -> int:
    if value != unset:
        return value
    text = os.environ.get(env)
    if text is None:
        raise UsageError(f"config.distributed.{field} is not set and neither "
                         f"is ${env}")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"${env}={text!r} is not an integer") from None


def is_primary() -> bool:
    """Whether this process writes the run's files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_rows(mesh: jax.sharding.Mesh, rows: int) -> np.ndarray:
    """Positions of this process's rows in a batch of `rows` split over the
    mesh's data axis, in the order jax.make_array_from_process_local_data
    expects (increasing)."""
    index_map = sharding.batch_sharding(mesh, 0).addressable_devices_indices_map(
        (rows,))
    # Devices that differ only along other mesh axes hold the same rows.
    spans = sorted({index[0].indices(rows)[:2] for index in index_map.values()})
    return np.concatenate([np.arange(start, stop) for start, stop in spans])
