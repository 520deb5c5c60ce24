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

from w2s_jax.core.errors import ModelError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
                "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

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
        raise ModelError(f"no checkpoint at {path!r}: not a file or directory")
    weight_files(path)  # names what is wrong with the directory's weights
    single = os.path.join(path, SAFETENSORS_FILE)
    if os.path.isfile(single):
        return _load_file(single)
    return _load_sharded(path, os.path.join(path, SAFETENSORS_INDEX))


def weight_files(directory: str) -> list[str]:
    """The safetensors files a checkpoint directory's weights are in,
    each checked with `check_safetensors_file`; ModelError naming what is
    wrong when there are none, only pickles, or damaged ones."""
    single = os.path.join(directory, SAFETENSORS_FILE)
    index = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        files = [os.path.join(directory, shard)
                 for shard in _index_shards(index)]
        for shard in files:
            if not os.path.isfile(shard):
                raise ModelError(
                    f"{index} lists the shard {os.path.basename(shard)}, "
                    f"which is not in {directory}; download or convert the "
                    f"checkpoint again")
    else:
        names = sorted(os.listdir(directory))
        pickled = [n for n in names if n.endswith(_PICKLE_SUFFIXES)]
        others = [n for n in names if n.endswith(".safetensors")]
        if pickled and not others:
            more = f" (and {len(pickled) - 1} more)" if len(pickled) > 1 else ""
            raise ModelError(
                f"refusing to unpickle {os.path.join(directory, pickled[0])}"
                f"{more}: {directory} has only pickled weights, and unpickling can "
                f"run arbitrary code. Convert it to safetensors once, in a "
                f"trusted environment: python -c \"from transformers import "
                f"AutoModel; AutoModel.from_pretrained('{directory}')"
                f".save_pretrained('{directory}', safe_serialization=True)\"")
        found = f", found only {', '.join(others)}" if others else ""
        raise ModelError(
            f"{directory} has no weights: expected {SAFETENSORS_FILE} (or "
            f"{SAFETENSORS_INDEX} and its shards){found}; it "
            f"holds: {', '.join(names) if names else '(nothing)'}. A "
            f"checkpoint directory is what save_pretrained(dir, "
            f"safe_serialization=True) writes")
    for filename in files:
        check_safetensors_file(filename)
    return files


def _index_shards(index_file: str) -> list[str]:
    try:
        with open(index_file) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelError(f"{index_file} is not a safetensors index (a JSON "
                         f"object with a weight_map): {type(err).__name__}: "
                         f"{err}") from None


def check_safetensors_file(filename: str) -> dict:
    """The header of a safetensors file, checked against the file's size
    without reading the tensors: ModelError naming the file if it is
    truncated or not safetensors at all."""
    again = "download or convert the checkpoint again"
    size = os.path.getsize(filename)
    if size < 8:
        raise ModelError(f"{filename} is {size} bytes, too short for a "
                         f"safetensors file; {again}")
    with open(filename, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        if header_size > size - 8:
            raise ModelError(
                f"{filename} is truncated or not a safetensors file: its "
                f"first 8 bytes announce a {header_size}-byte header, but the "
                f"file has {size} bytes; {again}")
        raw = f.read(header_size)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError too
        raise ModelError(f"{filename}: its {header_size}-byte header is not "
                         f"valid JSON ({err}); the file is damaged or not "
                         f"safetensors; {again}") from None
    data_size, end = size - 8 - header_size, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in info["data_offsets"])
            count = int(np.prod([int(d) for d in info["shape"]]))
            dtype = info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{filename}: the header's entry for tensor "
                             f"{name!r} is malformed ({info!r}); {again}") from None
        if dtype in _DTYPE_BYTES and stop - begin != count * _DTYPE_BYTES[dtype]:
            raise ModelError(f"{filename}: tensor {name!r} ({dtype}, shape "
                             f"{info['shape']}) spans {stop - begin} bytes "
                             f"instead of {count * _DTYPE_BYTES[dtype]}; {again}")
        end = max(end, stop)
    if end != data_size:
        state = "truncated" if end > data_size else "longer than its header says"
        raise ModelError(
            f"{filename} is {state}: its header places tensor data up to byte "
            f"{8 + header_size + end}, but the file has {size} bytes; {again}")
    return header


def _load_file(filename: str) -> dict[str, np.ndarray]:
    if not filename.endswith(".safetensors"):
        raise ModelError(f"{filename!r} is not a .safetensors file")
    check_safetensors_file(filename)
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
