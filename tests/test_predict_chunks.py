"""make_predict_step on one CPU device runs a batch's rows in chunks
(steps.predict_chunks): the chunk counts by hand, and the same
probabilities as the batch taken whole."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.core import sharding
from w2s_jax.data import packing
from w2s_jax.models import registry
from w2s_jax.train import loop, steps


def _mesh(n_devices):
    return sharding.make_mesh({"data": -1}, devices=jax.devices()[:n_devices])


@pytest.mark.parametrize("n_devices, rows, length, budget, chunks", [
    (1, 64, 64, 512, 8),     # 8 rows of 64 tokens a chunk
    (1, 64, 64, 1024, 4),
    (1, 64, 48, 512, 8),     # 10 rows would fit, but 64 rows split into 8s
    (1, 16, 16, 512, 1),     # the whole batch fits
    (1, 6, 1024, 512, 6),    # a row is over the budget: one row a chunk
    (4, 64, 64, 512, 1),     # several devices take the batch whole
])
def test_chunk_counts(monkeypatch, n_devices, rows, length, budget, chunks):
    monkeypatch.setattr(steps, "CPU_PREDICT_TOKENS", budget)
    ids = jnp.zeros((rows, length), jnp.int32)
    assert steps.predict_chunks((ids, ids), _mesh(n_devices)) == chunks


def test_a_choice_row_counts_all_its_candidates_tokens(monkeypatch):
    monkeypatch.setattr(steps, "CPU_PREDICT_TOKENS", 512)
    ids = jnp.zeros((16, 4, 32), jnp.int32)  # 4 candidates of 32 tokens
    assert steps.predict_chunks(ids, _mesh(1)) == 4  # 4 rows, 512 tokens


def test_features_are_not_chunked():
    features = jnp.zeros((64, 4096), jnp.float32)
    assert steps.predict_chunks(features, _mesh(1)) == 1


def test_chunked_rows_give_the_whole_batch_probabilities(monkeypatch):
    model = registry.resolve("tiny-gpt2-random")
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 40, 60)
    ids = [rng.integers(0, 256, n).astype(np.int32) for n in sizes]
    rows = 16
    pack = loop.token_inputs(ids, pad_id=0, max_ctx=64, packable=True).pack
    batch = packing.eval_batches(sizes, length=64, rows=rows)[0]
    tokens, segments, slots = loop.packed_eval_inputs(pack, batch, rows, 64, 8)
    mesh = _mesh(1)
    inputs = sharding.to_global(mesh, (tokens, segments, slots))
    module = steps.build_classifier(model, num_classes=3, linear_probe=False,
                                    head_init="normal")
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh)
    forward = steps.module_forward(module)

    monkeypatch.setattr(steps, "CPU_PREDICT_TOKENS", 10**9)
    assert steps.predict_chunks(inputs, mesh) == 1
    whole = np.asarray(steps.make_predict_step(forward, mesh)(params, inputs))
    monkeypatch.setattr(steps, "CPU_PREDICT_TOKENS", 128)  # 2 rows a chunk
    assert steps.predict_chunks(inputs, mesh) == rows // 2
    chunked = np.asarray(steps.make_predict_step(forward, mesh)(params, inputs))

    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    used = slots > 0
    assert chunked[used].std(0).min() > 1e-3  # the rows' examples differ
