"""The Flax GPT-2 must reproduce Hugging Face's PyTorch GPT-2 on tiny random models."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from w2s_jax.models.classifier import Classifier, head_from_unembedding, pool_last_token
from w2s_jax.models.gpt2 import HF_PREFIXES, HF_WEIGHT_MAP, GPT2Backbone, GPT2Config
from w2s_jax.models.weights import map_weights, read_safetensors

VOCAB, MAX_LEN = 300, 64
ATOL = 1e-4


def _hf_config():
    # initializer_range 5x GPT-2's 0.02: at the default, activations are so
    # small that even exact-vs-tanh GELU differs by < ATOL; at 0.1 it is ~7e-4
    # while our float32 error stays ~1e-6, so the parity checks have teeth.
    return transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=48, n_layer=2, n_head=4,
        initializer_range=0.1, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )


def _save(model_cls, directory, seed):
    torch.manual_seed(seed)
    model = model_cls(_hf_config()).eval()
    model.save_pretrained(directory)  # safetensors by default
    return model


def _load(directory):
    """Flax config and params for a saved checkpoint, the way real runs load them."""
    with open(directory / "config.json") as f:
        config = GPT2Config.from_hf(json.load(f))
    backbone = GPT2Backbone(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    abstract = jax.eval_shape(backbone.init, jax.random.key(0), ids, jnp.ones_like(ids))
    params = map_weights(
        read_safetensors(str(directory)),
        table=HF_WEIGHT_MAP,
        prefixes=HF_PREFIXES,
        num_layers=config.n_layer,
        abstract_params=abstract["params"],
    )
    return backbone, params


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    torch_model = _save(transformers.GPT2Model, directory, seed=0)
    backbone, params = _load(directory)
    return torch_model, backbone, params


def _right_pad(rows):
    length = max(len(r) for r in rows)
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
        mask[b, : len(row)] = 1
    return ids, mask


def _torch_hidden(torch_model, ids, mask):
    with torch.no_grad():
        out = torch_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )
    return out.last_hidden_state.numpy()


def _flax_hidden(backbone, params, ids, mask):
    # jit: op-by-op dispatch of an unjitted apply is many times slower on CPU.
    apply = jax.jit(backbone.apply)
    return np.asarray(apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))


def _assert_real_positions_match(flax_h, torch_h, mask):
    real = mask.astype(bool)
    np.testing.assert_allclose(flax_h[real], torch_h[real], rtol=0, atol=ATOL)


def test_unpadded_batch_matches(models):
    torch_model, backbone, params = models
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(3, 20)).astype(np.int32)
    mask = np.ones_like(ids)
    np.testing.assert_allclose(
        _flax_hidden(backbone, params, ids, mask),
        _torch_hidden(torch_model, ids, mask),
        rtol=0,
        atol=ATOL,
    )


def test_right_padded_batch_matches(models):
    torch_model, backbone, params = models
    rng = np.random.default_rng(1)
    ids, mask = _right_pad([rng.integers(1, VOCAB, size=n) for n in (17, 5, 11)])
    # Fill the padding with non-zero junk: it must not leak into real positions.
    ids = np.where(mask == 1, ids, 7).astype(np.int32)
    _assert_real_positions_match(
        _flax_hidden(backbone, params, ids, mask), _torch_hidden(torch_model, ids, mask), mask
    )


def test_token_id_zero_is_a_real_token(models):
    torch_model, backbone, params = models
    rows = [[5, 0, 9, 12, 0], [33, 0, 0, 8], [41, 2, 3]]  # id 0 mid-text and last
    ids, mask = _right_pad(rows)
    flax_h = _flax_hidden(backbone, params, ids, mask)
    torch_h = _torch_hidden(torch_model, ids, mask)
    _assert_real_positions_match(flax_h, torch_h, mask)

    pooled = np.asarray(pool_last_token(jnp.asarray(flax_h), jnp.asarray(mask)))
    last = [len(r) - 1 for r in rows]
    expected = torch_h[np.arange(len(rows)), last]
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=ATOL)
    # Pooling by counting non-zero ids (the public code's bug) picks another
    # position for the first row, so the check above really tells them apart.
    buggy = torch_h[0, np.count_nonzero(ids[0]) - 1]
    assert np.abs(buggy - expected[0]).max() > 10 * ATOL


def test_pool_last_token_uses_max_masked_index():
    hidden = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    mask = jnp.array([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0]])  # row 0 is non-contiguous
    pooled = pool_last_token(hidden, mask)
    np.testing.assert_array_equal(pooled, np.asarray(hidden)[[0, 1], [3, 1]])


def test_sequence_classification_checkpoint_loads(tmp_path):
    torch_model = _save(transformers.GPT2ForSequenceClassification, tmp_path, seed=1)
    names = read_safetensors(str(tmp_path)).keys()
    assert any(n.startswith("transformer.") for n in names) and "score.weight" in names
    backbone, params = _load(tmp_path)
    ids, mask = _right_pad([[3, 1, 4, 1, 5, 9], [2, 6]])
    _assert_real_positions_match(
        _flax_hidden(backbone, params, ids, mask),
        _torch_hidden(torch_model.transformer, ids, mask),
        mask,
    )


def test_classifier_with_unembedding_head(models):
    _, backbone, params = models
    label_tokens = [15, 16]
    head = head_from_unembedding(params["wte"]["embedding"], label_tokens)
    assert head.shape == (48, 2)
    classifier = Classifier(backbone)
    ids, mask = _right_pad([[10, 0, 11], [12, 13, 14, 15, 16]])
    logits = jax.jit(classifier.apply)(
        {"params": {"backbone": params, "head": {"kernel": head}}},
        jnp.asarray(ids),
        jnp.asarray(mask),
    )
    assert logits.dtype == jnp.float32 and logits.shape == (2, 2)
    pooled = pool_last_token(jnp.asarray(_flax_hidden(backbone, params, ids, mask)), mask)
    wte = params["wte"]["embedding"]
    expected = np.asarray(pooled) @ wte[label_tokens].T
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)


def test_head_from_unembedding_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="out of range"):
        head_from_unembedding(np.zeros((10, 4)), [3, 10])


def test_linear_probe_only_trains_the_head(models):
    _, backbone, backbone_params = models
    ids, mask = (jnp.asarray(a) for a in _right_pad([[1, 2, 3], [4, 5]]))
    labels = jnp.array([0, 1])

    # A zero head would block gradients to the backbone in both modes.
    head = jax.jit(Classifier(backbone, head_init="normal").init)(jax.random.key(0), ids, mask)
    params = {"backbone": backbone_params, "head": head["params"]["head"]}

    def grads(linear_probe):
        classifier = Classifier(backbone, linear_probe=linear_probe)

        def loss(p):
            logits = classifier.apply({"params": p}, ids, mask)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

        return jax.jit(jax.grad(loss))(params)

    def backbone_norm(g):
        return sum(float(jnp.abs(x).sum()) for x in jax.tree_util.tree_leaves(g["backbone"]))

    probe = grads(linear_probe=True)
    assert backbone_norm(probe) == 0.0
    assert float(jnp.abs(probe["head"]["kernel"]).sum()) > 0.0
    # Without the probe flag the same setup does reach the backbone.
    assert backbone_norm(grads(linear_probe=False)) > 0.0


def test_from_hf_rejects_unsupported_configs():
    base = _hf_config().to_dict()
    assert GPT2Config.from_hf(base).activation == "gelu_new"
    with pytest.raises(ValueError, match="'llama'.*gpt2"):
        GPT2Config.from_hf({**base, "model_type": "llama"})
    with pytest.raises(ValueError, match="'swish'.*supported"):
        GPT2Config.from_hf({**base, "activation_function": "swish"})
    with pytest.raises(ValueError, match="Unknown head_init 'ones'"):
        Classifier(GPT2Backbone(GPT2Config.from_hf(base)), head_init="ones")
