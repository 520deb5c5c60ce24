"""The Flax BERT and MPNet encoders must reproduce Hugging Face's PyTorch ones."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from w2s_jax.models import bert, mpnet
from w2s_jax.models.classifier import Classifier
from w2s_jax.models.weights import map_weights, read_safetensors

VOCAB, MAX_POS, HIDDEN = 128, 64, 48
ATOL = 1e-4


def _hf_config(family):
    # initializer_range 0.1 (5x the default) makes activations large enough
    # that a wrong detail (tanh GELU, a missing bias) shows well above ATOL.
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=96,
                  max_position_embeddings=MAX_POS, initializer_range=0.1)
    if family is bert:
        return transformers.BertConfig(**common)
    return transformers.MPNetConfig(**common)


FAMILIES = {
    bert: (bert.BertConfig, bert.BertBackbone, transformers.BertModel),
    mpnet: (mpnet.MPNetConfig, mpnet.MPNetBackbone, transformers.MPNetModel),
}
PAD_ID = {bert: 0, mpnet: 1}  # what each tokenizer pads with


def _save(model_cls, family, directory, seed):
    torch.manual_seed(seed)
    model = model_cls(_hf_config(family)).eval()
    model.save_pretrained(directory)  # safetensors by default
    return model


def _load(family, directory):
    """Flax backbone and params for a saved checkpoint, the way real runs load them."""
    config_cls, backbone_cls, _ = FAMILIES[family]
    with open(directory / "config.json") as f:
        config = config_cls.from_hf(json.load(f))
    backbone = backbone_cls(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    abstract = jax.eval_shape(backbone.init, jax.random.key(0), ids, jnp.ones_like(ids))
    params = map_weights(
        read_safetensors(str(directory)),
        table=family.HF_WEIGHT_MAP,
        prefixes=family.HF_PREFIXES,
        num_layers=family.num_layers(config),
        abstract_params=abstract["params"],
        unneeded=family.HF_UNNEEDED,
    )
    return backbone, params


@pytest.fixture(scope="module", params=[bert, mpnet], ids=["bert", "mpnet"])
def models(request, tmp_path_factory):
    family = request.param
    directory = tmp_path_factory.mktemp(family.__name__.rsplit(".", 1)[-1])
    torch_model = _save(FAMILIES[family][2], family, directory, seed=0)
    return (family, torch_model, *_load(family, directory))


def _batch(family):
    """Right-padded batch with token id 0 inside and at the end of real text.

    Id 1 (MPNet's pad) also appears inside real text: HF derives MPNet
    position ids from the ids, not the mask, so that token takes the pad
    position and later tokens are numbered as if it were absent. Positions
    from arange or from the mask would differ there.
    """
    rows = [[5, 0, 9, 12, 0, 40, 41, 1, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54],
            [33, 0, 0, 8], [41, 2, 3, 70, 71, 0, 90]]
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), PAD_ID[family], np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
        mask[b, : len(row)] = 1
    return ids, mask


def _torch_hidden(torch_model, ids, mask):
    with torch.no_grad():
        out = torch_model(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long))
    return out.last_hidden_state.numpy()


def _flax_hidden(backbone, params, ids, mask):
    return np.asarray(jax.jit(backbone.apply)({"params": params}, ids, mask))


def _assert_real_positions_match(flax_h, torch_h, mask):
    real = mask.astype(bool)
    np.testing.assert_allclose(flax_h[real], torch_h[real], rtol=0, atol=ATOL)


def test_right_padded_batch_matches(models):
    family, torch_model, backbone, params = models
    ids, mask = _batch(family)
    _assert_real_positions_match(
        _flax_hidden(backbone, params, ids, mask), _torch_hidden(torch_model, ids, mask), mask)


def test_weight_gradients_match_torch(models):
    # Every projection's weight gradient goes through dense_dot's own
    # backward pass ((dy^T x)^T on CPU); a wrong transpose or contraction
    # there is off by far more than 1e-4 on every kernel.
    family, torch_model, backbone, params = models
    ids, mask = _batch(family)
    probe = np.random.default_rng(0).normal(
        size=(*ids.shape, HIDDEN)).astype(np.float32) * mask[..., None]

    def objective(p):
        return jnp.sum(backbone.apply({"params": p}, ids, mask) * probe)

    grads = jax.jit(jax.grad(objective))(params)
    torch_model.zero_grad()
    out = torch_model(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long))
    (out.last_hidden_state * torch.tensor(probe)).sum().backward()
    # The same table that loads the weights lays their gradients out.
    torch_grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
                   for name, p in torch_model.named_parameters()}
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    expected = map_weights(torch_grads, table=family.HF_WEIGHT_MAP,
                           prefixes=family.HF_PREFIXES,
                           num_layers=family.num_layers(backbone.config),
                           abstract_params=abstract, unneeded=family.HF_UNNEEDED)
    # PyTorch's nn.Embedding(padding_idx) never gives the pad row a
    # gradient; the batch has the pad id inside real text, which real
    # tokenizers never produce (pad positions get no gradient either way).
    # MPNet's position table has the pad id as padding_idx too.
    for table in ("word_embeddings", "position_embeddings")[:1 + (family is mpnet)]:
        grads[table]["embedding"] = grads[table]["embedding"].at[PAD_ID[family]].set(0)
    kernels = 0
    for path, got in jax.tree_util.tree_leaves_with_path(grads):
        want = expected
        for key in path:
            want = want[key.key]
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=ATOL,
                                   err_msg=jax.tree_util.keystr(path))
        kernels += path[-1].key == "kernel"
    assert kernels == 2 * 6  # q, k, v, out, intermediate, output per layer


def test_exact_gelu_matches_torch_values_and_gradients():
    # The encoders' "gelu" is written with erf (layers.gelu_erf); a tanh
    # approximation or a wrong constant is off by 1e-4 or more here.
    from w2s_jax.models.layers import ACTIVATIONS
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    gelu = ACTIVATIONS["gelu"]
    values, grads = jax.vmap(jax.value_and_grad(gelu))(jnp.asarray(x))
    tx = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.gelu(tx)
    expected.sum().backward()
    np.testing.assert_allclose(values, expected.detach().numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(grads, tx.grad.numpy(), rtol=0, atol=2e-6)
    # bfloat16 compute: PyTorch's GELU on bfloat16 rounds a float32 result;
    # computed in bfloat16, 1 + erf cancels (40% off at -3, 0 at -4).
    tail = np.linspace(-4.5, -2, 51, dtype=np.float32)
    got = np.asarray(gelu(jnp.asarray(tail, jnp.bfloat16)), np.float32)
    expected = torch.nn.functional.gelu(
        torch.tensor(tail).to(torch.bfloat16)).float().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=0)  # 1 ulp: 0.4-0.8%


def test_mean_pooled_classifier_features_match(models):
    family, torch_model, backbone, params = models
    ids, mask = _batch(family)
    # An identity head makes the logits the pooled features themselves.
    classifier = Classifier(backbone, num_classes=HIDDEN, pooling="mean")
    head = {"kernel": np.eye(HIDDEN, dtype=np.float32)}
    variables = {"params": {"backbone": params, "head": head}}
    features = np.asarray(jax.jit(classifier.apply)(variables, ids, mask))
    torch_h = _torch_hidden(torch_model, ids, mask)
    expected = (torch_h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(features, expected, rtol=0, atol=ATOL)
    assert family.embedding_path == ("word_embeddings", "embedding")
    assert params["word_embeddings"]["embedding"].shape == (VOCAB, HIDDEN)


def test_mpnet_relative_position_bias_matters(tmp_path):
    torch_model = _save(transformers.MPNetModel, mpnet, tmp_path, seed=2)
    backbone, params = _load(mpnet, tmp_path)
    ids, mask = _batch(mpnet)
    torch_h = _torch_hidden(torch_model, ids, mask)
    _assert_real_positions_match(_flax_hidden(backbone, params, ids, mask), torch_h, mask)
    # Without the bias the outputs must be clearly off, so the parity above
    # really checks that it is applied.
    unbiased = {**params, "relative_attention_bias": {
        "embedding": np.zeros_like(params["relative_attention_bias"]["embedding"])}}
    gap = np.abs(_flax_hidden(backbone, unbiased, ids, mask) - torch_h)[mask.astype(bool)].max()
    assert gap > 10 * ATOL


def test_mpnet_buckets_match_hf():
    # Lengths past 128 reach the clamped buckets; 16/32/64 are the distances
    # where float rounding could shift a bucket.
    length = 300
    positions = torch.arange(length)
    relative = positions[None, :] - positions[:, None]  # key - query, as HF
    encoder_cls = transformers.models.mpnet.modeling_mpnet.MPNetEncoder
    expected = encoder_cls.relative_position_bucket(relative)
    np.testing.assert_array_equal(mpnet.relative_position_buckets(length), expected.numpy())


@pytest.mark.parametrize("family, task_cls, prefix", [
    (bert, transformers.BertForSequenceClassification, "bert."),
    (mpnet, transformers.MPNetForMaskedLM, "mpnet."),
], ids=["bert", "mpnet"])
def test_task_checkpoint_loads(tmp_path, family, task_cls, prefix):
    torch_model = _save(task_cls, family, tmp_path, seed=1)
    names = read_safetensors(str(tmp_path)).keys()
    assert any(n.startswith(prefix) for n in names)
    assert any(not n.startswith(prefix) for n in names)  # the task head
    backbone, params = _load(family, tmp_path)
    ids, mask = _batch(family)
    encoder = getattr(torch_model, prefix[:-1])
    _assert_real_positions_match(
        _flax_hidden(backbone, params, ids, mask), _torch_hidden(encoder, ids, mask), mask)


def test_from_hf_rejects_unsupported_configs():
    bert_base = _hf_config(bert).to_dict()
    mpnet_base = _hf_config(mpnet).to_dict()
    assert bert.BertConfig.from_hf(bert_base).hidden_act == "gelu"
    assert mpnet.MPNetConfig.from_hf(mpnet_base).pad_token_id == 1
    with pytest.raises(ValueError, match="'mpnet'.*bert"):
        bert.BertConfig.from_hf(mpnet_base)
    with pytest.raises(ValueError, match="'bert'.*mpnet"):
        mpnet.MPNetConfig.from_hf(bert_base)
    with pytest.raises(ValueError, match="'swish'.*supported"):
        bert.BertConfig.from_hf({**bert_base, "hidden_act": "swish"})
    with pytest.raises(ValueError, match="'silu'.*supported"):
        mpnet.MPNetConfig.from_hf({**mpnet_base, "hidden_act": "silu"})
    with pytest.raises(ValueError, match="'relative_key'.*absolute"):
        bert.BertConfig.from_hf({**bert_base, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="is_decoder"):
        bert.BertConfig.from_hf({**bert_base, "is_decoder": True})
    with pytest.raises(ValueError, match="relative_attention_num_buckets 64"):
        mpnet.MPNetConfig.from_hf({**mpnet_base, "relative_attention_num_buckets": 64})
    with pytest.raises(ValueError, match="pad_token_id 0"):
        mpnet.MPNetConfig.from_hf({**mpnet_base, "pad_token_id": 0})
