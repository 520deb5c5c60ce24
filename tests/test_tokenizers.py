"""HFTokenizer names the tokenizer class AutoTokenizer would pick, where that
is known from the checkpoint's files, so it loads the same tokenizer without
importing PyTorch.

The offline checkpoints come from the user's cache (~/.cache/w2s_jax, built
on first use); MiniLM-L6 ships ready-made and runs in the default set, the
others need a conversion and are slow tests. They skip when the offline
packages are not installed.
"""
import json
import os
import shutil
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
    "A <mask> token, then a long one: " + "word " * 150,
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


def _assert_encodes_as_auto_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    ours = tokenizers.HFTokenizer(path)
    auto = transformers.AutoTokenizer.from_pretrained(path)
    assert type(ours._tok) is type(auto)
    for special in (True, False):
        assert ours.encode(TEXTS, special_tokens=special) == auto(
            TEXTS, add_special_tokens=special)["input_ids"]
    pad = auto.pad_token_id if auto.pad_token_id is not None else auto.eos_token_id
    assert (ours.pad_id, ours.vocab_size) == (pad, len(auto))


@pytest.mark.parametrize("hub_id", CHECKPOINTS)
def test_direct_class_encodes_as_auto_tokenizer(hub_id):
    path = _checkpoint(hub_id)
    assert tokenizers.direct_class(path) is not None
    _assert_encodes_as_auto_tokenizer(path)


def test_direct_class_builds_the_pipeline_as_auto_tokenizer(tmp_path):
    """A BERT checkpoint whose tokenizer.json does not lowercase and whose
    config does not say: BertTokenizer rebuilds the normaliser from the
    config (lowercasing by default), as AutoTokenizer does; reading
    tokenizer.json as it is would not."""
    path = tmp_path / "cased"
    shutil.copytree(_checkpoint("sentence-transformers/all-MiniLM-L6-v2"), path)
    with open(path / "tokenizer_config.json") as f:
        config = json.load(f)
    config.pop("do_lower_case", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with open(path / "tokenizer.json") as f:
        pipeline = json.load(f)
    pipeline["normalizer"]["lowercase"] = False
    (path / "tokenizer.json").write_text(json.dumps(pipeline))
    _assert_encodes_as_auto_tokenizer(str(path))


def test_direct_class_leaves_torch_unimported():
    path = _checkpoint("sentence-transformers/all-MiniLM-L6-v2")
    code = ("import sys; from w2s_jax.models import tokenizers; "
            f"tok = tokenizers.HFTokenizer({path!r}); "
            "print(tok.encode(['a test'])[0], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[101,", "1037,", "3231,", "102]", "False"]


BERT = {"model_type": "bert"}


@pytest.mark.parametrize("tokenizer_config, model_config, expected", [
    ({"tokenizer_class": "BertTokenizerFast"}, BERT, "BertTokenizer"),
    ({"tokenizer_class": "PreTrainedTokenizerFast"}, {"model_type": "llama"},
     "PreTrainedTokenizerFast"),
    # Classes that AutoTokenizer resolves through the model config.
    ({"tokenizer_class": "GPT2Tokenizer"}, {"model_type": "gpt2"}, None),
    # qwen2 checkpoints name the generic class, and AutoTokenizer overrides it.
    ({"tokenizer_class": "PreTrainedTokenizerFast"}, {"model_type": "qwen2"},
     None),
    ({}, BERT, None),
    ({"tokenizer_class": "BertTokenizer", "auto_map": {}}, BERT, None),
    ({"tokenizer_class": "BertTokenizer"}, None, None),  # no config.json
])
def test_direct_class_only_where_auto_tokenizer_is_known(
        tmp_path, tokenizer_config, model_config, expected):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if model_config is not None:
        (tmp_path / "config.json").write_text(json.dumps(model_config))
    assert tokenizers.direct_class(str(tmp_path)) == expected
