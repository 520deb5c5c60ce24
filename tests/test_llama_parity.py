"""The Flax Llama family must reproduce Hugging Face's PyTorch Llama/Qwen2 on tiny random models."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from w2s_jax.models.classifier import Classifier, head_from_unembedding, pool_last_token
from w2s_jax.models.llama import (
    HF_PREFIXES, HF_UNNEEDED, HF_WEIGHT_MAP, LlamaBackbone, LlamaConfig, embedding_path,
    hf_weight_map, num_layers,
)
from w2s_jax.models.weights import map_weights, read_safetensors

VOCAB = 128
ATOL = 1e-4
# initializer_range 0.2 (HF's default is 0.02) so activations are large
# enough that a wrong norm, activation or RoPE detail shows up above ATOL.
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2,
    rms_norm_eps=1e-5,
)
CASES = {
    # GQA with 2 query heads per KV head; Llama's attention_bias covers o_proj too.
    "llama_gqa_tied": (transformers.LlamaConfig, transformers.LlamaModel, dict(
        num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True,
        rope_theta=500_000.0)),
    "llama_untied": (transformers.LlamaConfig, transformers.LlamaModel, dict(
        tie_word_embeddings=False, attention_bias=False)),
    # Llama 3.1 scaling; a short original context so most frequencies rescale.
    "llama3_rope": (transformers.LlamaConfig, transformers.LlamaModel, dict(
        num_key_value_heads=1, rope_theta=10_000.0, rope_scaling=dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16))),
    "qwen2_gqa": (transformers.Qwen2Config, transformers.Qwen2Model, dict(
        num_key_value_heads=2, tie_word_embeddings=True)),
}


def _build(case, model_cls=None, seed=0):
    config_cls, base_cls, extra = CASES[case]
    torch.manual_seed(seed)
    model = (model_cls or base_cls)(config_cls(**_COMMON, **extra)).eval()
    # HF initialises norm weights to 1 and biases to 0, where mapping them to
    # the wrong place would go unnoticed; randomise every 1-D parameter.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.normal_(1.0 if "norm" in name else 0.0, 0.2)
    return model


def _load(directory):
    """Flax config and params for a saved checkpoint, the way real runs load them."""
    with open(directory / "config.json") as f:
        config = LlamaConfig.from_hf(json.load(f))
    backbone = LlamaBackbone(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    abstract = jax.eval_shape(backbone.init, jax.random.key(0), ids, jnp.ones_like(ids))
    params = map_weights(
        read_safetensors(str(directory)),
        table=hf_weight_map(config),
        prefixes=HF_PREFIXES,
        num_layers=num_layers(config),
        abstract_params=abstract["params"],
        unneeded=HF_UNNEEDED,
    )
    return backbone, params


@pytest.fixture(scope="module", params=sorted(CASES))
def models(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = _build(request.param)
    torch_model.save_pretrained(directory)  # safetensors by default
    backbone, params = _load(directory)
    return torch_model, backbone, params


def _right_pad(rows, pad_id=7):
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, np.int32)  # junk that must not leak
    mask = np.zeros((len(rows), length), np.int32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
        mask[b, : len(row)] = 1
    return ids, mask


def _batch():
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, VOCAB, size=n) for n in (19, 5, 11)]
    rows.append([5, 0, 9, 12, 0])  # token id 0 mid-text and last: a real token
    return _right_pad(rows)


def _torch_hidden(torch_model, ids, mask):
    with torch.no_grad():
        out = torch_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )
    return out.last_hidden_state.numpy()


def _flax_hidden(backbone, params, ids, mask):
    apply = jax.jit(backbone.apply)
    return np.asarray(apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))


def _assert_real_positions_match(flax_h, torch_h, mask):
    real = mask.astype(bool)
    np.testing.assert_allclose(flax_h[real], torch_h[real], rtol=0, atol=ATOL)


def test_right_padded_batch_matches(models):
    torch_model, backbone, params = models
    ids, mask = _batch()
    torch_h = _torch_hidden(torch_model, ids, mask)
    # Guard against a vacuous pass: outputs must be far from zero at this scale.
    assert np.abs(torch_h[mask.astype(bool)]).mean() > 100 * ATOL
    _assert_real_positions_match(_flax_hidden(backbone, params, ids, mask), torch_h, mask)


@pytest.mark.parametrize("case", ["llama_untied", "qwen2_gqa"])
def test_causal_lm_checkpoint_loads(case, tmp_path):
    model_cls = {"llama_untied": transformers.LlamaForCausalLM,
                 "qwen2_gqa": transformers.Qwen2ForCausalLM}[case]
    torch_model = _build(case, model_cls, seed=1)
    torch_model.save_pretrained(tmp_path)
    names = read_safetensors(str(tmp_path)).keys()
    assert all(n.startswith("model.") or n == "lm_head.weight" for n in names)
    # Tied checkpoints omit the LM head; untied ones carry one we skip.
    assert ("lm_head.weight" in names) == (not torch_model.config.tie_word_embeddings)
    backbone, params = _load(tmp_path)
    ids, mask = _batch()
    _assert_real_positions_match(
        _flax_hidden(backbone, params, ids, mask),
        _torch_hidden(torch_model.model, ids, mask),
        mask,
    )


def test_classifier_with_unembedding_head(models):
    _, backbone, params = models
    label_tokens = [15, 0]
    embeddings = params[embedding_path[0]][embedding_path[1]]
    head = head_from_unembedding(embeddings, label_tokens)
    ids, mask = _right_pad([[10, 0, 11], [12, 13, 14, 15, 16]])
    logits = jax.jit(Classifier(backbone).apply)(
        {"params": {"backbone": params, "head": {"kernel": head}}},
        jnp.asarray(ids), jnp.asarray(mask),
    )
    pooled = pool_last_token(jnp.asarray(_flax_hidden(backbone, params, ids, mask)), mask)
    expected = np.asarray(pooled) @ np.asarray(embeddings)[label_tokens].T
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)


def _minimal(**overrides):
    return {"model_type": "llama", "vocab_size": 10, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
            "max_position_embeddings": 128, **overrides}


def test_from_hf_reads_both_config_layouts():
    config = LlamaConfig.from_hf(_minimal(num_key_value_heads=None))
    assert (config.num_key_value_heads, config.head_dim) == (4, 4)
    assert (config.rope_theta, config.rope_scaling) == (10_000.0, None)
    assert not (config.qkv_bias or config.o_bias)
    # transformers >= 5 layout: theta inside rope_parameters.
    v5 = LlamaConfig.from_hf(_minimal(rope_parameters={"rope_type": "default", "rope_theta": 3.0}))
    assert v5.rope_theta == 3.0
    # Older hub layout: top-level theta, Llama 3.1 scaling with the legacy "type" key.
    legacy = LlamaConfig.from_hf(_minimal(rope_theta=500_000.0, rope_scaling={
        "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}))
    assert legacy.rope_theta == 500_000.0
    assert legacy.rope_scaling.original_max_position_embeddings == 128
    qwen = LlamaConfig.from_hf(_minimal(model_type="qwen2", use_sliding_window=False))
    assert (qwen.qkv_bias, qwen.o_bias) == (True, False)
    assert len(hf_weight_map(qwen)) == len(HF_WEIGHT_MAP) + 3


@pytest.mark.parametrize("overrides, message", [
    (dict(model_type="mistral"), "'mistral'.*llama"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "'yarn'.*default"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "'linear'"),
    (dict(rope_parameters={"full_attention": {"rope_type": "default"}}), "full_attention"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(model_type="qwen2", use_sliding_window=True), "sliding"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "'gelu'"),
    (dict(num_key_value_heads=3), "multiple"),
])
def test_from_hf_rejects_unimplemented_variants(overrides, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig.from_hf(_minimal(**overrides))
