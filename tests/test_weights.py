"""Checkpoint reading and name/shape mapping, on synthetic tensors (no torch)."""
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from w2s_jax.models.gpt2 import HF_PREFIXES, HF_WEIGHT_MAP, GPT2Backbone, GPT2Config
from w2s_jax.core.errors import ModelError
from w2s_jax.models.weights import (check_safetensors_file, map_weights,
                                    read_safetensors)

CONFIG = GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=2, n_head=2)


@pytest.fixture(scope="module")
def abstract():
    ids = jnp.zeros((1, 4), jnp.int32)
    return jax.eval_shape(GPT2Backbone(CONFIG).init, jax.random.key(0), ids, ids)["params"]


def _state(abstract, prefix="transformer."):
    """A checkpoint-like dict: one random tensor per HF name, shaped for the model."""
    rng = np.random.default_rng(0)
    state = {}
    for flax_tpl, hf_tpl in HF_WEIGHT_MAP:
        layers = range(CONFIG.n_layer) if "{i}" in hf_tpl else [None]
        for i in layers:
            node = abstract
            for key in flax_tpl.format(i=i).split("/"):
                node = node[key]
            state[prefix + hf_tpl.format(i=i)] = rng.normal(size=node.shape).astype(np.float32)
    return state


def _map(state, abstract, table=HF_WEIGHT_MAP):
    return map_weights(
        state,
        table=table,
        prefixes=HF_PREFIXES,
        num_layers=CONFIG.n_layer,
        abstract_params=abstract,
    )


def test_round_trip_fills_every_param(abstract):
    state = _state(abstract)
    # Known-unneeded extras: a tied LM head, a classification head, mask buffers.
    state["lm_head.weight"] = state["transformer.wte.weight"]
    state["score.weight"] = np.zeros((2, 8), np.float32)
    state["transformer.h.0.attn.bias"] = np.ones((1, 1, 16, 16), np.float32)
    state["transformer.h.1.attn.masked_bias"] = np.float32(-1e4)
    params = _map(state, abstract)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(abstract)
    np.testing.assert_array_equal(
        params["h_1"]["attn"]["c_attn"]["kernel"], state["transformer.h.1.attn.c_attn.weight"]
    )
    np.testing.assert_array_equal(params["ln_f"]["scale"], state["transformer.ln_f.weight"])


def test_unprefixed_names_load(abstract):
    params = _map(_state(abstract, prefix=""), abstract)
    assert params["wpe"]["embedding"].shape == (16, 8)


def test_shape_mismatch_names_the_parameter(abstract):
    state = _state(abstract)
    state["transformer.h.1.mlp.c_fc.weight"] = np.zeros((32, 8), np.float32)  # transposed
    with pytest.raises(ValueError) as err:
        _map(state, abstract)
    message = str(err.value)
    for part in ("h_1/mlp/c_fc/kernel", "h.1.mlp.c_fc.weight", "(32, 8)", "(8, 32)"):
        assert part in message


def test_missing_tensor(abstract):
    state = _state(abstract)
    del state["transformer.ln_f.bias"]
    with pytest.raises(ValueError, match=r"missing 'ln_f\.bias'"):
        _map(state, abstract)


def test_unexpected_tensor(abstract):
    state = _state(abstract)
    state["transformer.h.0.crossattention.c_attn.weight"] = np.zeros((8, 16), np.float32)
    with pytest.raises(ValueError, match=r"not used.*h\.0\.crossattention\.c_attn\.weight"):
        _map(state, abstract)


def test_param_not_covered_by_table(abstract):
    table = tuple(row for row in HF_WEIGHT_MAP if row[0] != "ln_f/bias")
    state = _state(abstract)
    del state["transformer.ln_f.bias"]
    with pytest.raises(ValueError, match="not filled.*ln_f/bias"):
        _map(state, abstract, table)


def test_pickled_only_directory_is_refused(tmp_path):
    # Never unpickled, so arbitrary bytes stand in for a real pickle.
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelError, match="refusing to unpickle .*pytorch_model.bin"
                       ".*safe_serialization=True"):
        read_safetensors(str(tmp_path))


def test_sharded_checkpoint(tmp_path):
    shards = {
        "model-00001-of-00002.safetensors": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "model-00002-of-00002.safetensors": {"b": np.ones(4, np.float32), "c": np.zeros(1, np.float32)},
    }
    weight_map = {}
    for filename, tensors in shards.items():
        safetensors.numpy.save_file(tensors, str(tmp_path / filename))
        weight_map.update({name: filename for name in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    state = read_safetensors(str(tmp_path))
    assert sorted(state) == ["a", "b", "c"]
    np.testing.assert_array_equal(state["a"], shards["model-00001-of-00002.safetensors"]["a"])


def test_half_precision_is_widened_to_float32(tmp_path):
    path = tmp_path / "half.safetensors"
    safetensors.numpy.save_file(
        {"bf": np.array([1.5, -2.0], ml_dtypes.bfloat16), "fp": np.array([0.25], np.float16)},
        str(path),
    )
    state = read_safetensors(str(path))
    assert state["bf"].dtype == np.float32 and state["fp"].dtype == np.float32
    np.testing.assert_array_equal(state["bf"], [1.5, -2.0])


def test_safetensors_header_is_checked_against_the_file_size(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(
        {"a": np.ones((3, 4), np.float32), "b": np.zeros(5, ml_dtypes.bfloat16),
         "c": np.arange(7, dtype=np.int64)}, str(path), metadata={"format": "pt"})
    header = check_safetensors_file(str(path))  # a whole file passes
    assert sorted(k for k in header if k != "__metadata__") == ["a", "b", "c"]
    whole = path.read_bytes()
    for damaged, message in ((whole[:-1], "is truncated"),
                             (whole + b"\0", "longer than its header says"),
                             (whole[:5], "too short for a safetensors file"),
                             (b"\xff" * 64, "not a safetensors file")):
        path.write_bytes(damaged)
        with pytest.raises(ModelError, match=message) as err:
            check_safetensors_file(str(path))
        assert str(path) in str(err.value)
        with pytest.raises(ModelError, match=message):
            read_safetensors(str(path))  # never reaches safetensors' own error
