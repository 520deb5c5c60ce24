"""Model names -> where the weights come from, the family, and defaults.

A model is named by a registry short name (`gpt2-medium`), a Hugging Face hub
id (`openai-community/gpt2`), or a local checkpoint directory holding
config.json, safetensors weights and tokenizer files. Registry entries with
`random_config` are randomly initialised models with a byte tokenizer: they
need no files at all and serve the smoke experiment and the tests.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from w2s_jax.models import gpt2, tokenizers, weights


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    lr: float  # the public release's default for this size
    hub_id: str | None = None
    random_config: dict | None = None  # HF-style config for random init
    minibatch_size: int | None = None  # per-step examples that fit in memory


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
    # Randomly initialised byte-level GPT-2s (no files): weak < strong.
    ModelSpec("tiny-gpt2-random", "gpt2", 1e-3, random_config=_tiny(2, 64, 4)),
    ModelSpec("small-gpt2-random", "gpt2", 1e-3, random_config=_tiny(4, 128, 4)),
)}

@dataclasses.dataclass(frozen=True)
class Family:
    """What the loaders need to know about one architecture."""
    config_from_hf: Any  # HF config.json dict -> backbone config
    backbone: Any  # flax module class taking the config
    weight_map: tuple  # (flax path template, HF name template) pairs
    prefixes: tuple  # HF name prefixes to strip (task-model checkpoints)
    num_layers: Any  # backbone config -> number of layers


FAMILIES = {
    "gpt2": Family(gpt2.GPT2Config.from_hf, gpt2.GPT2Backbone,
                   gpt2.HF_WEIGHT_MAP, gpt2.HF_PREFIXES, lambda c: c.n_layer),
}
CHECKPOINT_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json",
                    "tokenizer.json", "tokenizer_config.json", "vocab.json",
                    "merges.txt", "special_tokens_map.json")


@dataclasses.dataclass
class ResolvedModel:
    """Everything needed to build, initialise and tokenize for one model."""
    name: str
    family: str
    backbone_config: Any  # e.g. gpt2.GPT2Config
    tokenizer: tokenizers.Tokenizer
    default_lr: float
    default_minibatch_size: int | None
    checkpoint_dir: str | None  # None = random init
    source: dict  # what was loaded from where, for the results file


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(name)


def check_model_name(name: str, field: str = "model") -> None:
    if name in MODELS or os.path.isdir(name) or _looks_like_hub_id(name):
        return
    raise ValueError(
        f"{field}={name!r} is not a known model, an existing checkpoint "
        f"directory, or a hub id of the form 'org/name'; known models: "
        f"{', '.join(sorted(MODELS))}")


def resolve(name: str) -> ResolvedModel:
    """Find the model's config, tokenizer and weights (local or hub)."""
    check_model_name(name)
    spec = MODELS.get(name)
    if spec is not None and spec.random_config is not None:
        return ResolvedModel(
            name=name, family=spec.family,
            backbone_config=FAMILIES[spec.family].config_from_hf(
                spec.random_config),
            tokenizer=tokenizers.ByteTokenizer(),
            default_lr=spec.lr, default_minibatch_size=spec.minibatch_size,
            checkpoint_dir=None,
            source={"kind": "random_init", "config": spec.random_config})
    if spec is not None:
        path, source = _download(spec.hub_id), {"kind": "hub", "id": spec.hub_id}
    elif os.path.isdir(name):
        path, source = name, {"kind": "local_dir", "path": os.path.abspath(name)}
    else:
        path, source = _download(name), {"kind": "hub", "id": name}
    with open(os.path.join(path, "config.json")) as f:
        hf_config = json.load(f)
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"model {name!r} has model_type={model_type!r}; supported model "
            f"types: {', '.join(sorted(FAMILIES))}")
    source["config_sha256"] = _sha256_file(os.path.join(path, "config.json"))
    return ResolvedModel(
        name=name, family=model_type,
        backbone_config=FAMILIES[model_type].config_from_hf(hf_config),
        tokenizer=tokenizers.HFTokenizer(path),
        default_lr=spec.lr if spec else 1e-5,
        default_minibatch_size=spec.minibatch_size if spec else None,
        checkpoint_dir=path, source=source)


def _download(hub_id: str) -> str:
    """The hub snapshot (or its local cache); safetensors only, never pickles."""
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(
            hub_id, allow_patterns=list(CHECKPOINT_FILES))
    except Exception as err:  # the hub raises many types; all mean "not here"
        raise RuntimeError(
            f"could not fetch model {hub_id!r} from the Hugging Face hub or its "
            f"cache ({type(err).__name__}: {err}). Pass a local checkpoint "
            f"directory instead, or a registry model that needs no files: "
            f"{', '.join(n for n, s in MODELS.items() if s.random_config)}"
        ) from err


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backbone(model: ResolvedModel):
    family = FAMILIES[model.family]
    return family.backbone(model.backbone_config)


def pretrained_backbone_params(model: ResolvedModel, abstract_params):
    """Numpy backbone params from the checkpoint, checked against shapes."""
    family = FAMILIES[model.family]
    state = weights.read_safetensors(model.checkpoint_dir)
    return weights.map_weights(
        state, table=family.weight_map, prefixes=family.prefixes,
        num_layers=family.num_layers(model.backbone_config),
        abstract_params=abstract_params)
