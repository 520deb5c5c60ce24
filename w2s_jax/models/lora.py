"""LoRA: low-rank adapters on a model's attention and MLP projections.

An adapted projection computes y = x W + b + (x A) B * alpha / rank, with A
[in, rank] and B [rank, out] new parameters (A uniform in +-1/sqrt(in) and
B zero, as peft starts them, so a fresh adapter changes nothing) and W, b
the pretrained weights, frozen. Only the adapters and the classification
head train (`is_trainable`), so gradients, optimizer state and stage
checkpoints hold those alone; the frozen base can be kept in bfloat16.
Adapters carry the logical axes of the weight they adapt (A the kernel's
input axis, B its output axis; the rank is never split), so they shard
like it.

Which projections are adapted is read while the model is traced: inside
`scope(spec)`, `layers.dense` builds a `layers.LoraDense` for every layer
whose name is in `spec.targets`. A scope rather than a module field because
the families build their projections many modules deep, and the one place
that makes them all is `layers.dense`; the learner enters the scope around
every init and apply (`steps.init_params`, `steps.module_forward`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses

# The attention and MLP projections of each family, by layer name (a name
# matches every layer so called, as peft's target_modules do).
DEFAULT_TARGETS = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
              "down_proj"),
    "bert": ("query", "key", "value", "out", "intermediate", "output"),
    "mpnet": ("query", "key", "value", "out", "intermediate", "output"),
}
BASE_DTYPES = ("float32", "bfloat16")
ADAPTERS = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    targets: tuple[str, ...]
    base_dtype: str = "float32"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


_ACTIVE: contextvars.ContextVar[LoraSpec | None] = contextvars.ContextVar(
    "lora", default=None)


@contextlib.contextmanager
def scope(spec: LoraSpec | None):
    """Within it, `layers.dense` adapts the layers `spec` targets (None:
    none)."""
    token = _ACTIVE.set(spec)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> LoraSpec | None:
    return _ACTIVE.get()


def spec_from_config(cfg, family: str) -> LoraSpec | None:
    """The LoRA settings of a model's config (`model_config(...).lora`), or
    None when rank is 0."""
    if not cfg.rank:
        return None
    targets = (tuple(t.strip() for t in cfg.targets.split(",") if t.strip())
               or DEFAULT_TARGETS[family])
    return LoraSpec(int(cfg.rank), float(cfg.alpha), targets, cfg.base_dtype)


def is_adapter(path: tuple) -> bool:
    return path[-1] in ADAPTERS


def is_trainable(path: tuple) -> bool:
    """Under LoRA: the adapters and the classification head."""
    return is_adapter(path) or path[0] == "head"
