"""Tokenizers behind one small interface: texts in, lists of token ids out.

Pretrained models use their own Hugging Face tokenizer. Randomly initialised
test models use `ByteTokenizer`, which needs no files, so the smoke
experiment and the tests run with no network and no downloaded vocabulary.
"""
from __future__ import annotations

import json
import os
from typing import Protocol, Sequence

# tokenizer_config.json classes that transformers builds, from the
# checkpoint's tokenizer.json, exactly as its generic PreTrainedTokenizerFast
# does (tests/test_tokenizers.py compares the two on every offline
# checkpoint). The generic class loads without AutoTokenizer's model-config
# machinery, which imports PyTorch wherever it is installed: +190 MB of host
# memory and +2 s in every process. Other classes (GPT-2's, Qwen2's, ...)
# build their own pipeline in transformers 5 and go through AutoTokenizer.
GENERIC_CLASSES = frozenset({
    "BertTokenizer", "BertTokenizerFast", "MPNetTokenizer",
    "MPNetTokenizerFast", "PreTrainedTokenizerFast", "TokenizersBackend"})


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

        loader = (transformers.PreTrainedTokenizerFast if loads_generically(path)
                  else transformers.AutoTokenizer)
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


def loads_generically(path: str) -> bool:
    """The checkpoint has a tokenizer.json and its tokenizer class is one of
    GENERIC_CLASSES."""
    config = os.path.join(path, "tokenizer_config.json")
    if not (os.path.isfile(os.path.join(path, "tokenizer.json"))
            and os.path.isfile(config)):
        return False
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("tokenizer_class") in GENERIC_CLASSES


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
