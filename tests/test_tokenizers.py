"""HFTokenizer loads the generic fast tokenizer where that encodes exactly as
transformers' AutoTokenizer does, and so never imports PyTorch for it.

The offline checkpoints come from the user's cache (~/.cache/w2s_jax, built
on first use); MiniLM-L6 ships ready-made and runs in the default set, the
others need a conversion and are slow tests. They skip when the offline
packages are not installed.
"""
import json
import os
import subprocess
import sys

import pytest

from w2s_jax.models import offline, tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "Hello world! It's a TEST, naïve café.",
    "  two  spaces\tand\nnewline 12345 costs $6.70 ",
    "",
    "Q: What is 2+2? A: 4 <|im_end|> [SEP] </s>",
    "Emoji 🤗 and CJK 漢字 and accents ÉÀÖ",
]

CHECKPOINTS = [
    "sentence-transformers/all-MiniLM-L6-v2",
    pytest.param("sentence-transformers/paraphrase-MiniLM-L3-v2",
                 marks=pytest.mark.slow),
    pytest.param("sentence-transformers/all-mpnet-base-v2",
                 marks=pytest.mark.slow),
    pytest.param("HuggingFaceTB/SmolLM2-135M-Instruct", marks=pytest.mark.slow),
]


def _checkpoint(hub_id):
    missing = offline.OFFLINE_SOURCES[hub_id].missing()
    if missing:
        pytest.skip(f"offline packages not installed: {', '.join(missing)}")
    return offline.checkpoint_dir(hub_id)


@pytest.mark.parametrize("hub_id", CHECKPOINTS)
def test_generic_loader_encodes_as_auto_tokenizer(hub_id):
    transformers = pytest.importorskip("transformers")
    path = _checkpoint(hub_id)
    assert tokenizers.loads_generically(path)
    ours = tokenizers.HFTokenizer(path)
    assert type(ours._tok) is transformers.PreTrainedTokenizerFast
    auto = transformers.AutoTokenizer.from_pretrained(path)
    for special in (True, False):
        assert ours.encode(TEXTS, special_tokens=special) == auto(
            TEXTS, add_special_tokens=special)["input_ids"]
    pad = auto.pad_token_id if auto.pad_token_id is not None else auto.eos_token_id
    assert (ours.pad_id, ours.vocab_size) == (pad, len(auto))


def test_generic_loader_leaves_torch_unimported():
    path = _checkpoint("sentence-transformers/all-MiniLM-L6-v2")
    code = ("import sys; from w2s_jax.models import tokenizers; "
            f"tok = tokenizers.HFTokenizer({path!r}); "
            "print(tok.encode(['a test'])[0], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[101,", "1037,", "3231,", "102]", "False"]


@pytest.mark.parametrize("files, generic", [
    ({"tokenizer.json": {}, "tokenizer_config.json":
      {"tokenizer_class": "BertTokenizer"}}, True),
    # Classes that build their own pipeline in transformers 5.
    ({"tokenizer.json": {}, "tokenizer_config.json":
      {"tokenizer_class": "GPT2Tokenizer"}}, False),
    ({"tokenizer.json": {}, "tokenizer_config.json":
      {"tokenizer_class": "Qwen2Tokenizer"}}, False),
    ({"tokenizer.json": {}, "tokenizer_config.json": {}}, False),
    # No tokenizer.json: AutoTokenizer converts the vocabulary files.
    ({"tokenizer_config.json": {"tokenizer_class": "BertTokenizer"}}, False),
    ({"tokenizer.json": {}}, False),
])
def test_loads_generically_only_for_listed_classes(tmp_path, files, generic):
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert tokenizers.loads_generically(str(tmp_path)) is generic
