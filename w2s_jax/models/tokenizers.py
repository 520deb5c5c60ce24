"""Tokenizers behind one small interface: texts in, lists of token ids out.

Pretrained models use their own Hugging Face tokenizer. Randomly initialised
test models use `ByteTokenizer`, which needs no files, so the smoke
experiment and the tests run with no network and no downloaded vocabulary.
"""
from __future__ import annotations

import json
import os
from typing import Protocol, Sequence

# Where AutoTokenizer's choice is known without its model-config machinery
# (which imports PyTorch wherever it is installed: +190 MB of host memory
# and +2 s in every process), the class it would pick is named directly.
# tokenizer_config.json's class -> the transformers class AutoTokenizer
# loads for it, for checkpoints of these model types: for them transformers
# 5 trusts the named class (it overrides the name only for types it knows
# to be misnamed on the hub, e.g. qwen2), and a checkpoint with an auto_map
# is left to AutoTokenizer. tests/test_tokenizers.py checks the two agree.
DIRECT_CLASSES = {
    "BertTokenizer": "BertTokenizer", "BertTokenizerFast": "BertTokenizer",
    "MPNetTokenizer": "MPNetTokenizer", "MPNetTokenizerFast": "MPNetTokenizer",
    "PreTrainedTokenizerFast": "PreTrainedTokenizerFast",
    "TokenizersBackend": "TokenizersBackend"}
DIRECT_MODEL_TYPES = frozenset({"bert", "mpnet", "llama"})


class Tokenizer(Protocol):
    pad_id: int
    vocab_size: int

    def encode(self, texts: Sequence[str],
               special_tokens: bool = True) -> list[list[int]]:
        ...


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocabulary 256).

    Byte 0 is a real token here, just as id 0 is in GPT-2, so padding with it
    exercises the attention-mask pooling rather than hiding bugs in it.
    """

    pad_id = 0
    vocab_size = 256

    def encode(self, texts: Sequence[str],
               special_tokens: bool = True) -> list[list[int]]:
        del special_tokens  # bytes have none
        return [list(text.encode("utf-8")) for text in texts]


class HFTokenizer:
    """A transformers tokenizer loaded from a local checkpoint directory."""

    def __init__(self, path: str):
        import transformers  # heavy import, only when a real model is used

        name = direct_class(path)
        loader = getattr(transformers, name) if name else transformers.AutoTokenizer
        self._tok = loader.from_pretrained(path, trust_remote_code=False)
        self.vocab_size = len(self._tok)
        # GPT-2 has no pad token. Any id works because pad positions are
        # masked out; use eos so no new embedding row is needed.
        pad = self._tok.pad_token_id
        if pad is None:
            pad = self._tok.eos_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def encode(self, texts: Sequence[str],
               special_tokens: bool = True) -> list[list[int]]:
        return self._tok(list(texts),
                         add_special_tokens=special_tokens)["input_ids"]


def direct_class(path: str) -> str | None:
    """The transformers tokenizer class AutoTokenizer would load for the
    checkpoint at `path`, where DIRECT_CLASSES knows it; else None."""
    configs = []
    for name in ("tokenizer_config.json", "config.json"):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                configs.append(json.load(f))
        except (OSError, ValueError):
            return None
    tokenizer_config, model_config = configs
    if ("auto_map" in tokenizer_config
            or model_config.get("model_type") not in DIRECT_MODEL_TYPES):
        return None
    return DIRECT_CLASSES.get(tokenizer_config.get("tokenizer_class"))


def label_token_ids(tokenizer: Tokenizer, num_classes: int) -> list[int]:
    """Token ids of "0", "1", ... for the unembedding head init."""
    ids = []
    for k in range(num_classes):
        encoded = tokenizer.encode([str(k)], special_tokens=False)[0]
        if len(encoded) != 1:
            raise ValueError(
                f"head_init='unembedding' needs the label {k!r} to be one "
                f"token, but it encodes to {encoded}")
        ids.append(encoded[0])
    return ids
