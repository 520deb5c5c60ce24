"""The experiment's config schema: every field, its default, and validation.

Config files in configs/ start from `base_config()` and override fields, so
every experiment has the same keys; `validate(config)` then checks the values
before any data is read or any model is trained.
"""
from __future__ import annotations

import ml_collections

OVERLENGTH_POLICIES = ("drop", "truncate")
CEILING_HALVES = ("A", "B")
LR_SCHEDULES = ("cosine", "constant")
HEAD_INITS = ("zeros", "normal", "unembedding")
MODES = ("finetune", "features")
POOLINGS = ("", "last", "mean", "first")


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """One model's settings. `None` means "the model registry's default"."""
    cfg = ml_collections.ConfigDict()
    cfg.name = name  # registry short name, hub id, or local checkpoint directory
    cfg.lr = ml_collections.FieldReference(None, field_type=float)
    # The head's own learning rate (None = same as lr). A zero-initialised
    # head at a backbone learning rate can stay near zero for a whole short
    # run, so that nothing learns; a larger head lr avoids that.
    cfg.head_lr = ml_collections.FieldReference(None, field_type=float)
    cfg.minibatch_size = ml_collections.FieldReference(None, field_type=int)
    cfg.epochs = ml_collections.FieldReference(None, field_type=int)  # None = steps.epochs
    cfg.linear_probe = False
    cfg.head_init = "zeros"
    # "finetune" trains the model; "features" trains a linear head on frozen
    # features extracted once (cached): the release's vision-style probe.
    cfg.mode = "finetune"
    cfg.pooling = ""  # "" = the family's default: last (decoders), mean (encoders)
    cfg.feature_layer = -1  # features mode: -1 = the output, k = after block k
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """The public release's defaults (w2s_facts.md section 2)."""
    config = ml_collections.ConfigDict()
    config.task = "sciq"
    # A local mirror laid out as <dir>/<task>/<split>.jsonl; "" means the
    # W2S_DATA_DIR environment variable, and if that is unset, the hub.
    config.data_dir = ""
    config.n_train = 20000  # train pool, split into halves A and B
    config.n_test = 10000
    config.balance = True
    config.seed = 0
    # Sweeps in one command: comma-separated seeds and w2s losses, e.g.
    # "0,1,2" and "xent,logconf"; empty = just `seed` / `loss`. Stages shared
    # between runs (weak, ceiling, features) are trained once.
    config.seeds = ""
    config.losses = ""
    config.max_ctx = 1024
    config.overlength = "drop"  # the release dropped long examples; we count them
    config.ceiling_half = "A"  # the release trains the ceiling on A; legacy on B

    config.weak = model_config("gpt2")
    config.strong = model_config("gpt2-medium")

    # The loss of the weak-to-strong stage. Weak and ceiling stages are
    # trained on gold labels with xent, as in the paper.
    config.loss = "xent"
    config.loss_params = ml_collections.ConfigDict(
        {"alpha_max": 0.5, "warmup_frac": 0.2, "schedule": "linear"})

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32
    config.train.minibatch_size = 32  # per step; batch_size / this = accumulation
    config.train.epochs = 2
    config.train.lr_schedule = "cosine"  # cosine decay to 0 over all steps
    config.train.warmup_steps = 0
    config.train.weight_decay = 0.0
    config.train.eval_batch_size = 64
    config.train.log_every = 10  # steps between progress lines

    # Device mesh: axis name -> size, -1 fills with the remaining devices.
    # data splits batches; fsdp splits batches and also parameters and
    # optimizer state; tensor splits MLP units, attention heads, vocabulary.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # Backbone compute dtype: "float32" or "bfloat16". Parameters, optimizer
    # state, the head, logits and losses stay float32 either way.
    config.compute_dtype = "float32"
    # Gradient checkpointing per transformer block: "none", "full"
    # (recompute each block) or "dots" (keep the weight matmuls' outputs).
    config.remat = "none"

    # Steps between checkpoints of an unfinished stage (0 = only on SIGTERM);
    # a rerun of the same command resumes from the latest one.
    config.checkpoint_every_steps = 50

    # Multi-host runs (jax.distributed). An explicit coordinator (here or
    # W2S_COORDINATOR / W2S_NUM_PROCESSES / W2S_PROCESS_ID) suits GPU
    # clusters; `enabled` (or W2S_DISTRIBUTED=1) alone auto-detects the
    # cluster, e.g. on Cloud TPU. 0 and -1 mean "not set".
    config.distributed = ml_collections.ConfigDict({
        "enabled": False, "coordinator_address": "", "num_processes": 0,
        "process_id": -1})
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the bad value and the valid choices."""
    # Local imports: the registries pull in heavy modules (datasets,
    # transformers) that a bare config file should not need.
    from w2s_jax.core import sharding
    from w2s_jax.train import losses, steps
    from w2s_jax.data import tasks
    from w2s_jax.models import registry

    _check_keys(config, base_config(), prefix="config")
    _check_choice("config.task", config.task, tasks.task_names())
    _check_choice("config.loss", config.loss, sorted(losses.LOSSES))
    for loss in sweep_values(config.losses, str):
        _check_choice("config.losses", loss, sorted(losses.LOSSES))
    sweep_values(config.seeds, int)
    _check_choice("config.overlength", config.overlength, OVERLENGTH_POLICIES)
    _check_choice("config.ceiling_half", config.ceiling_half, CEILING_HALVES)
    _check_choice("config.train.lr_schedule", config.train.lr_schedule,
                  LR_SCHEDULES)
    _check_choice("config.loss_params.schedule", config.loss_params.schedule,
                  losses.ALPHA_SCHEDULES)
    _check_choice("config.compute_dtype", config.compute_dtype,
                  list(steps.COMPUTE_DTYPES))
    _check_choice("config.remat", config.remat, list(sharding.REMAT_POLICIES))
    for role in ("weak", "strong"):
        model = config[role]
        registry.check_model_name(model.name, field=f"config.{role}.name")
        _check_choice(f"config.{role}.head_init", model.head_init, HEAD_INITS)
        _check_choice(f"config.{role}.mode", model.mode, MODES)
        _check_choice(f"config.{role}.pooling", model.pooling, POOLINGS)
    for field in ("n_train", "n_test", "max_ctx", "train.batch_size",
                  "train.minibatch_size", "train.epochs",
                  "train.eval_batch_size"):
        value = _get(config, field)
        if value is None or value <= 0:
            raise ValueError(f"config.{field} must be a positive integer, "
                             f"got {value!r}")
    if config.checkpoint_every_steps < 0:
        raise ValueError(f"config.checkpoint_every_steps must be >= 0 (0 = "
                         f"only on SIGTERM), got {config.checkpoint_every_steps}")
    if config.distributed.num_processes < 0 or config.distributed.process_id < -1:
        raise ValueError(f"config.distributed.num_processes must be >= 0 and "
                         f"process_id >= -1 (0 / -1 = not set), got "
                         f"{config.distributed.to_dict()}")
    if config.train.batch_size % config.train.minibatch_size:
        raise ValueError(
            f"config.train.batch_size ({config.train.batch_size}) must be a "
            f"multiple of config.train.minibatch_size "
            f"({config.train.minibatch_size})")


def sweep_values(text: str, kind) -> list:
    """"0,1,2" -> [0, 1, 2]; names the field's bad entry if any."""
    values = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            values.append(kind(item))
        except ValueError:
            raise ValueError(f"{item!r} in {text!r} is not a valid "
                             f"{kind.__name__}") from None
    return values


def check_override_flags(argv: list[str]) -> None:
    """Reject `--config.<path>=...` flags that name no config field.

    ml_collections would fail on them deep inside flag parsing with a bare
    AttributeError; this names the bad key and the valid ones instead.
    """
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0].split(".")
        node, prefix = base_config(), "config"
        for part in path:
            if prefix == "config.loss_params":
                break  # loss hyper-parameters differ by loss
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                valid = (", ".join(sorted(node.keys()))
                         if isinstance(node, ml_collections.ConfigDict) else "none")
                raise ValueError(f"unknown config key {prefix}.{part} in {arg!r}; "
                                 f"valid keys at {prefix}: {valid}")
            node, prefix = node[part], f"{prefix}.{part}"


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not valid; choose one of: "
                         f"{', '.join(map(str, choices))}")


def _check_keys(config, reference, prefix: str) -> None:
    """Unknown keys are typos that would otherwise be silently ignored."""
    for key in config.keys():
        if key not in reference:
            raise ValueError(
                f"unknown config key {prefix}.{key}; valid keys at {prefix}: "
                f"{', '.join(sorted(reference.keys()))}")
        value, ref = config[key], reference[key]
        if isinstance(value, ml_collections.ConfigDict) and key != "loss_params":
            ref = ref if isinstance(ref, ml_collections.ConfigDict) else None
            if ref is not None:
                _check_keys(value, ref, f"{prefix}.{key}")
