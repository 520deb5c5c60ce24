"""The device mesh from the config, and how batches and params are placed.

Batches are split over the "data" axis; parameters are replicated. The mesh
uses Auto axis types on purpose: jax.make_mesh defaults to Explicit axes, on
which ordinary jit code fails with "contracting dimensions are sharded".
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

BATCH_AXIS = "data"


def make_mesh(axes: dict, devices=None) -> jax.sharding.Mesh:
    """axes: name -> size, one size may be -1 (= all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(axes.keys())
    if BATCH_AXIS not in names:
        raise ValueError(f"config.mesh must have a {BATCH_AXIS!r} axis, got "
                         f"axes {names}")
    sizes = [int(axes[name]) for name in names]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh sizes must be positive, with at most "
                         f"one -1; got {dict(axes)}")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if len(devices) % known:
            raise ValueError(f"config.mesh {dict(axes)}: {len(devices)} "
                             f"devices are not divisible by {known}")
        sizes[fill[0]] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"config.mesh {dict(zip(names, sizes))} needs "
                         f"{math.prod(sizes)} devices, but {len(devices)} "
                         f"are available")
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), names,
                             axis_types=(AxisType.Auto,) * len(names))


def batch_size_divisor(mesh: jax.sharding.Mesh) -> int:
    return mesh.shape[BATCH_AXIS]


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, batch_dim: int) -> NamedSharding:
    """Shard dimension `batch_dim` of an array over the data axis."""
    return NamedSharding(mesh, P(*([None] * batch_dim), BATCH_AXIS))


def to_global(mesh: jax.sharding.Mesh, tree, batch_dim: int = 0):
    """Host numpy arrays -> global device arrays split over the data axis."""
    sharding = batch_sharding(mesh, batch_dim)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), tree)
