"""Loading Hugging Face checkpoints into Flax parameter trees (any model family).

Only safetensors are read. Pickled checkpoints (`pytorch_model.bin`, `*.pt`)
can run arbitrary code when unpickled, so they are refused rather than loaded.

The mapping from checkpoint names to Flax paths is a declarative table owned
by each model family (e.g. `gpt2.HF_WEIGHT_MAP`); `map_weights` expands it and
checks every shape, so a wrong table or checkpoint fails loudly at load time
instead of training a silently broken model.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any, Sequence

# Importing ml_dtypes registers bfloat16 with numpy; without it safetensors
# cannot return bf16 tensors as numpy arrays at all.
import ml_dtypes
import numpy as np
import safetensors.numpy

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# Checkpoint tensors that are legitimately left unused: task heads we replace
# with our own, and GPT-2's old causal-mask buffers (`attn.bias` and
# `attn.masked_bias` directly under a block, not the `c_attn.bias` parameter).
_UNNEEDED = (
    re.compile(r"^lm_head\.weight$"),
    re.compile(r"^score\.(weight|bias)$"),
    re.compile(r"(^|\.)attn\.(bias|masked_bias)$"),
)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a checkpoint directory (single or sharded) or one `.safetensors` file.

    Half-precision tensors are widened to float32: parameters are always
    stored in float32 here, and the compute dtype is chosen separately.
    """
    if os.path.isfile(path):
        return _load_file(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}")
    single = os.path.join(path, SAFETENSORS_FILE)
    if os.path.isfile(single):
        return _load_file(single)
    index = os.path.join(path, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        return _load_sharded(path, index)
    pickled = sorted(f for f in os.listdir(path) if f.endswith(_PICKLE_SUFFIXES))
    if pickled:
        raise ValueError(
            f"{path!r} only has pickled weights ({', '.join(pickled)}), which are refused "
            "because unpickling can execute arbitrary code. Convert it once, in a trusted "
            "environment, with transformers: `AutoModel.from_pretrained(path)"
            ".save_pretrained(out_dir, safe_serialization=True)`."
        )
    raise FileNotFoundError(f"{path!r} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}")


def _load_file(filename: str) -> dict[str, np.ndarray]:
    if not filename.endswith(".safetensors"):
        raise ValueError(f"{filename!r} is not a .safetensors file")
    return {name: _widen(t) for name, t in safetensors.numpy.load_file(filename).items()}


def _widen(tensor: np.ndarray) -> np.ndarray:
    if tensor.dtype in (np.float16, ml_dtypes.bfloat16):
        return tensor.astype(np.float32)
    return tensor


def _load_sharded(directory: str, index_file: str) -> dict[str, np.ndarray]:
    with open(index_file) as f:
        weight_map: dict[str, str] = json.load(f)["weight_map"]
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(_load_file(os.path.join(directory, shard)))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"{index_file} lists tensors absent from its shards: {missing[:5]}")
    return state


def _strip_prefixes(
    hf_state: dict[str, np.ndarray], prefixes: Sequence[str]
) -> dict[str, np.ndarray]:
    stripped: dict[str, np.ndarray] = {}
    for name, tensor in hf_state.items():
        short = next((name[len(p):] for p in prefixes if name.startswith(p)), name)
        if short in stripped:
            raise ValueError(f"Checkpoint has {short!r} both with and without a prefix")
        stripped[short] = tensor
    return stripped


# Named tensor transforms a table row may give as its third element:
# PyTorch nn.Linear stores [out, in]; Flax Dense kernels are [in, out].
TRANSFORMS = {"T": lambda x: np.ascontiguousarray(x.T)}


def _expand(table: Sequence[tuple], num_layers: int) -> list[tuple[str, str, Any]]:
    """One (flax_path, hf_name, transform) per parameter; `{i}` rows repeat
    per layer. A row is (flax, hf) or (flax, hf, transform), the transform
    a TRANSFORMS name or a callable on the numpy tensor."""
    rows = []
    for row in table:
        flax_tpl, hf_tpl = row[0], row[1]
        transform = row[2] if len(row) > 2 else None
        if isinstance(transform, str):
            transform = TRANSFORMS[transform]
        if "{i}" in flax_tpl or "{i}" in hf_tpl:
            rows.extend((flax_tpl.format(i=i), hf_tpl.format(i=i), transform)
                        for i in range(num_layers))
        else:
            rows.append((flax_tpl, hf_tpl, transform))
    return rows


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):  # dict or FrozenDict
            flat.update(_flatten(value, f"{path}/"))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def map_weights(
    hf_state: dict[str, np.ndarray],
    *,
    table: Sequence[tuple],
    prefixes: Sequence[str],
    num_layers: int,
    abstract_params: Any,
    unneeded: Sequence[str] = (),
) -> dict:
    """Builds the nested Flax `params` dict (float32 numpy) from checkpoint tensors.

    `abstract_params` is `jax.eval_shape(module.init, ...)["params"]`; every
    one of its leaves must be filled, with exactly its shape. `unneeded` adds
    family-specific regexes of checkpoint tensors that may go unused.
    """
    skip = _UNNEEDED + tuple(re.compile(p) for p in unneeded)
    state = _strip_prefixes(hf_state, prefixes)
    expected = _flatten(abstract_params)
    flat: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for flax_path, hf_name, transform in _expand(table, num_layers):
        if flax_path not in expected:
            raise ValueError(f"Table entry {flax_path!r} ({hf_name!r}) is not a model parameter")
        if hf_name not in state:
            raise ValueError(
                f"Checkpoint is missing {hf_name!r} (for {flax_path!r}); "
                f"some available names: {sorted(state)[:8]}"
            )
        tensor, want = state[hf_name], tuple(expected[flax_path].shape)
        if transform is not None:
            tensor = transform(tensor)
        if tuple(tensor.shape) != want:
            raise ValueError(
                f"Shape mismatch for parameter {flax_path!r} (checkpoint {hf_name!r}): "
                f"checkpoint has {tuple(tensor.shape)}, model expects {want}"
            )
        flat[flax_path] = np.asarray(tensor, dtype=np.float32)
        used.add(hf_name)

    unfilled = sorted(set(expected) - set(flat))
    if unfilled:
        raise ValueError(f"Model parameters not filled by the weight table: {unfilled}")
    unexpected = sorted(
        name for name in set(state) - used if not any(p.search(name) for p in skip)
    )
    if unexpected:
        raise ValueError(f"Checkpoint tensors not used by the model: {unexpected}")
    return _unflatten(flat)
