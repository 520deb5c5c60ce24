"""Scale-out: the device mesh, logical axis rules, activation constraints, remat.

Mesh axes (config.mesh; always all three, in this order, tensor innermost):
  data    data parallelism: batches are split, parameters replicated.
  fsdp    data parallel for activations too (batches split over data x fsdp),
          but parameters and optimizer state are split over it and gathered
          where used (ZeRO-3 / FSDP).
  tensor  Megatron-style: MLP hidden units, attention heads and the
          vocabulary are split.

Models name each parameter dimension and their main activations with logical
axes ("embed", "mlp", "batch", ...); one table, RULES, maps those names to
mesh axes, so a new layout is a new table rather than new model code. The
mesh uses Auto axis types on purpose: jax.make_mesh defaults to Explicit
axes, on which ordinary jit code fails with "contracting dimensions are
sharded".
"""
from __future__ import annotations

import contextlib
import math
import threading

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from w2s_jax.core.errors import UsageError
from w2s_jax.core.progress import log

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (or axes), None = replicated. Activations have
# their own names: hidden states are split over "batch", which already
# takes fsdp, so their width cannot also be split over fsdp like "embed".
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    # parameters
    ("vocab", "tensor"),
    ("positions", None),  # position / token-type / relative-bucket tables
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),  # attention heads (x head_dim): q|k|v, out-projection in
    ("qkv", "tensor"),  # GPT-2's fused q|k|v projection
    ("kv", "tensor"),  # grouped-query K/V projections
    ("norm", None),
    ("classes", None),
    ("lora", None),  # a LoRA adapter's rank: small, never split
)

# Gradient checkpointing per transformer block. "full" recomputes the whole
# block in the backward pass; "dots" keeps the outputs of its weight matmuls
# (dot_generals without batch dimensions) and recomputes the rest, including
# attention's batched einsums, whose [B, H, L, L] outputs dominate memory.
# The projections' matmuls are a custom_vjp (models/dense_dot.py), which the
# dots policy cannot see into, so their outputs carry this name as well.
DENSE_OUTPUT = "dense_output"
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(DENSE_OUTPUT)),
}


def make_mesh(axes: dict, devices=None) -> jax.sharding.Mesh:
    """axes: name -> size for MESH_AXES; missing axes have size 1, and one
    size may be -1 (= all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = [name for name in axes if name not in MESH_AXES]
    if unknown:
        raise UsageError(f"config.mesh has unknown axes {unknown}; valid "
                         f"axes: {list(MESH_AXES)}")
    sizes = [axes.get(name, 1) for name in MESH_AXES]
    if sizes.count(-1) > 1 or any(
            isinstance(s, bool) or not isinstance(s, int) or s == 0 or s < -1
            for s in sizes):
        raise UsageError(f"config.mesh sizes must be positive integers, with "
                         f"at most one -1; got {dict(axes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise UsageError(f"config.mesh {dict(axes)}: {len(devices)} "
                             f"devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise UsageError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs "
                         f"{math.prod(sizes)} devices, but {len(devices)} "
                         f"are available")
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
                             axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_size_divisor(mesh: jax.sharding.Mesh) -> int:
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, batch_dim: int) -> NamedSharding:
    """Shard dimension `batch_dim` of an array over the data and fsdp axes."""
    return NamedSharding(mesh, P(*([None] * batch_dim), BATCH_AXES))


def shardings_of(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def _as_tuple(axes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def check_rules(rules, mesh: jax.sharding.Mesh) -> None:
    """Each logical name has one rule, and every rule names real mesh axes."""
    names = [name for name, _ in rules]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"logical axis rules give {repeated} more than one "
                         f"rule")
    for name, axes in rules:
        bad = [axis for axis in _as_tuple(axes) if axis not in mesh.shape]
        if bad:
            raise ValueError(f"logical axis rule {name!r} -> {axes!r} names "
                             f"mesh axes {bad} that are not in the mesh "
                             f"{tuple(mesh.axis_names)}")


def mesh_axes(names, rules, what: str) -> list:
    """An array's logical axis names -> the mesh axes of each dimension.

    Refuses a name without a rule (a typo would silently replicate) and two
    dimensions of one array mapped to the same mesh axis (which jax cannot
    lay out). `what` names the array in the error.
    """
    table = dict(rules)
    missing = [name for name in names if name not in table]
    if missing:
        raise ValueError(f"{what}: logical axes {missing} (of {tuple(names)}) "
                         f"have no rule; rules exist for {sorted(table)}")
    owner: dict[str, str] = {}
    for name in names:
        for axis in _as_tuple(table[name]):
            if axis in owner:
                raise ValueError(
                    f"{what}: logical axes {owner[axis]!r} and {name!r} (of "
                    f"{tuple(names)}) both map to mesh axis {axis!r}")
            owner[axis] = name
    return [table[name] for name in names]


_recording = threading.local()


def logical_init(init, names: tuple[str, ...]):
    """The initializer `init`, with its parameter's logical axis `names`.

    The names are attached (nn.with_logical_partitioning) only while
    `param_shardings` traces the model; anywhere else `module.init` returns
    plain arrays, the tree that the weight tables, optimizers and
    checkpoints work on.
    """
    tagged = nn.with_logical_partitioning(init, names)

    def initializer(*args, **kwargs):
        recording = getattr(_recording, "on", False)
        return (tagged if recording else init)(*args, **kwargs)
    return initializer


def _is_tagged(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def param_shardings(init_fn, *args, mesh: jax.sharding.Mesh, rules=RULES):
    """(abstract params, NamedSharding per param) of `init_fn(*args)`.

    Only traced (jax.eval_shape): nothing is allocated. A dimension that
    its mesh axes do not divide (GPT-2's 50257-row vocabulary on tensor=2)
    is replicated instead, and logged.
    """
    check_rules(rules, mesh)

    def recorded(*a):
        _recording.on = True
        try:
            return init_fn(*a)
        finally:
            _recording.on = False

    # A fresh function object, so no jit cache holds a plain-array trace.
    tagged = jax.eval_shape(recorded, *args)
    replicated_dims = []

    def shard(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if not _is_tagged(leaf):
            raise ValueError(f"parameter {name} has no logical axis names; "
                             f"create it with sharding.logical_init")
        shape = leaf.value.shape
        if len(leaf.names) != len(shape):
            raise ValueError(f"parameter {name} of shape {shape} has logical "
                             f"axes {leaf.names}: one per dimension needed")
        spec, undivided = divisible_spec(shape, leaf.names, rules, mesh,
                                         f"parameter {name}")
        replicated_dims.extend(f"{name} dim {dim} ({logical}={size} over "
                               f"{axes}={ways})"
                               for dim, logical, size, axes, ways in undivided)
        return NamedSharding(mesh, P(*spec))

    shardings = jax.tree_util.tree_map_with_path(shard, tagged,
                                                 is_leaf=_is_tagged)
    if replicated_dims:
        log(f"[sharding] {len(replicated_dims)} parameter dimensions are not "
            f"divisible by their mesh axes and stay replicated: "
            f"{'; '.join(replicated_dims[:4])}"
            f"{' ...' if len(replicated_dims) > 4 else ''}")
    abstract = jax.tree.map(lambda x: x.value, tagged, is_leaf=_is_tagged)
    return abstract, shardings


def like_params(tree, params, param_shardings, default: NamedSharding):
    """A sharding for every leaf of `tree` (e.g. an optimizer state).

    A leaf whose path ends with a parameter's path and that has its shape
    (Adam's moments) gets that parameter's sharding; the rest (step counts)
    get `default`. `param_shardings` may also be one sharding for all.
    """
    if isinstance(param_shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda _: param_shardings, tree)
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    by_path = {path: (leaf.shape, s) for (path, leaf), s in
               zip(flat_params, jax.tree.leaves(param_shardings))}

    def pick(path, leaf):
        for start in range(len(path)):
            shape, found = by_path.get(tuple(path[start:]), (None, None))
            if found is not None and shape == leaf.shape:
                return found
        return default
    return jax.tree_util.tree_map_with_path(pick, tree)


_active = threading.local()


@contextlib.contextmanager
def activation_rules(mesh: jax.sharding.Mesh, rules=RULES):
    """Within it, `constrain` pins activations to the mesh. Enter it inside
    the jitted function, around the model call, so it is active at trace."""
    previous = getattr(_active, "value", None)
    _active.value = (mesh, rules)
    try:
        yield
    finally:
        _active.value = previous


def constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
    """Pins `x` to the mesh by logical names under `activation_rules`; a
    no-op anywhere else (a plain `apply`, the parity tests). A dimension
    its mesh axes do not divide stays whole, as in `param_shardings`."""
    active = getattr(_active, "value", None)
    if active is None:
        return x
    mesh, rules = active
    spec, _ = divisible_spec(x.shape, names, rules, mesh,
                             f"activation {tuple(names)}")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


def divisible_spec(shape, names, rules, mesh, what: str
                   ) -> tuple[list, list[tuple[int, str, int, object, int]]]:
    """The mesh axes of each dimension by `rules` (mesh_axes), None where
    they do not divide the dimension's size; and those dimensions, as
    (dim, logical name, size, axes, ways)."""
    spec, undivided = [], []
    for dim, (size, logical, axes) in enumerate(
            zip(shape, names, mesh_axes(names, rules, what))):
        ways = math.prod(mesh.shape[axis] for axis in _as_tuple(axes))
        if size % ways:
            undivided.append((dim, logical, size, axes, ways))
            axes = None
        spec.append(axes)
    return spec, undivided


def remat_block(block, policy: str):
    """The block class, gradient-checkpointed by REMAT_POLICIES[policy]."""
    saveable = REMAT_POLICIES[policy]
    return block if saveable is None else nn.remat(block, policy=saveable)


def to_global(mesh: jax.sharding.Mesh, tree, batch_dim: int = 0,
              global_rows: int | None = None):
    """Host numpy arrays -> global device arrays split over the data axis.

    `tree` holds this process's rows (distributed.process_rows) of a batch
    of `global_rows` rows; without `global_rows` it is the whole batch, the
    same on every process.
    """
    sharding = batch_sharding(mesh, batch_dim)

    def put(x):
        shape = list(x.shape)
        if global_rows is not None:
            shape[batch_dim] = global_rows
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))
    return jax.tree.map(put, tree)
