"""The experiment's config schema: every field, its default, and validation.

Config files in configs/ start from `base_config()` and override fields, so
every experiment has the same keys; `validate(config)` then checks the values
before any data is read or any model is trained.
"""
from __future__ import annotations

import ast
import os

import ml_collections

from w2s_jax.core.errors import UsageError

OVERLENGTH_POLICIES = ("drop", "truncate")
CEILING_HALVES = ("A", "B")
LR_SCHEDULES = ("cosine", "constant")
MATMUL_PRECISIONS = ("default", "bfloat16")
HEAD_INITS = ("zeros", "normal", "unembedding")
MODES = ("finetune", "features", "reward", "choice")
POOLINGS = ("", "last", "mean", "first")
# Below this many tokens every example is cut to almost nothing.
MIN_CTX = 8


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
    # features extracted once (cached): the release's vision-style probe;
    # "reward" trains a reward model on preference pairs (tasks with
    # completions, e.g. anthropic_hh): a scalar head scores each completion
    # and P(A preferred) = sigmoid(r(A) - r(B)), as the paper does;
    # "choice" scores each candidate of a task whose label picks one of
    # them (task chess: the candidate moves): a tied decoder by the LM
    # log-probability of each candidate, another model by a scalar head.
    cfg.mode = "finetune"
    cfg.pooling = ""  # "" = the family's default: last (decoders), mean (encoders)
    cfg.feature_layer = -1  # features mode: -1 = the output, k = after block k
    # LoRA (w2s_jax/models/lora.py): rank > 0 adds adapters of that rank to
    # `targets` ("" = the family's attention and MLP projections; else
    # comma-separated layer names, e.g. "q_proj,v_proj"), scaled by
    # alpha / rank; only they and the head train, and checkpoints hold only
    # them. base_dtype "bfloat16" keeps the frozen weights in bfloat16.
    cfg.lora = ml_collections.ConfigDict({"rank": 0, "alpha": 16.0,
                                          "targets": "",
                                          "base_dtype": "float32"})
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """The public release's defaults (w2s_facts.md section 2)."""
    config = ml_collections.ConfigDict()
    config.task = "sciq"  # a registered task, or "file:<path>" (see task_fields)
    # A task from a local file (--config.task=file:data.jsonl, .csv or
    # .parquet): which columns hold the text, the 0/1 label, an optional
    # second text (pairs), an optional list of candidates (multiple choice:
    # label = the right one's index), an optional group id, and how many
    # classes the labels have (w2s_jax/data/user_tasks.py).
    config.task_fields = ml_collections.ConfigDict({
        "text": "text", "label": "label", "text_pair": "", "choices": "",
        "group": "", "num_classes": 2})
    # A local mirror laid out as <dir>/<task>/<split>.jsonl; "" means the
    # W2S_DATA_DIR environment variable, and if that is unset, the hub.
    config.data_dir = ""
    # Where a --config.task=tfds:<builder> dataset is prepared (or is
    # prepared to); "" means TFDS's default, $TFDS_DATA_DIR or
    # ~/tensorflow_datasets (w2s_jax/data/tfds_tasks.py).
    config.tfds_data_dir = ""
    config.n_train = 20000  # train pool, split into halves A and B
    config.n_test = 10000
    config.balance = True
    config.seed = 0
    # Sweeps in one command: comma-separated seeds and w2s losses, e.g.
    # "0,1,2" and "xent,logconf"; empty = just `seed` / `loss`. Stages shared
    # between runs (weak, ceiling, features) are trained once.
    config.seeds = ""
    config.losses = ""
    # A grid in one command (w2s_jax/experiment/grid.py): `ladder` = model
    # names, weakest first, every (weak, strong) pair of them a point;
    # `tasks` = task names, each point run on each; `points` = a list of
    # override dicts ({"weak.name": "gpt2", "loss_params.alpha_max": 0.5}),
    # each a point. Every point runs config.seeds x config.losses; stages
    # shared between runs are trained once, and `--shard=i/n` runs one
    # deterministic share of the runs (shards may share the workdir).
    config.grid = ml_collections.ConfigDict({"ladder": "", "tasks": "",
                                             "points": []})
    # Where finished stages, their claims and the result store live when
    # shards run on machines that do not share a filesystem: a bucket URL,
    # "gs://<bucket>/<path>" (pip install -e ".[gcs]"; core/bucket_stages.py).
    # "" keeps them in the workdir, which shards on one shared filesystem
    # share. Each workdir keeps a local copy of every stage it used.
    config.store = ""
    config.max_ctx = 1024
    config.overlength = "drop"  # the release dropped long examples; we count them
    config.ceiling_half = "A"  # the release trains the ceiling on A; legacy on B

    # What to run: a recipe from w2s_jax/experiment/recipes/ (w2s: weak ->
    # strong with a ceiling; bootstrap: a chain of models; saliency: probes
    # and finetunes of one strong model; synthetic: a rule-made supervisor
    # with controlled errors, see config.synthetic).
    config.recipe = "w2s"
    # The models, weakest first: `weak` and `strong` are the two-model
    # shorthand. A config that needs more sets `models` to slots "m1", "m2",
    # ... (see `model_list`), each a model_config; then weak and strong
    # must be left at their defaults.
    config.weak = model_config("gpt2")
    config.strong = model_config("gpt2-medium")
    config.models = ml_collections.ConfigDict()

    # The loss of every student stage (stages on gold use xent, as in the
    # paper). `loss_params` holds every loss's parameters; None means the
    # loss's own default (w2s_jax/train/losses.py), and setting one that
    # the run's losses do not take is an error naming the valid keys.
    config.loss = "xent"
    config.loss_params = _loss_params()

    # What a supervisor hands its student: "soft" probabilities (the
    # release) or "hard" one-hot labels of its argmax.
    config.weak_labels = "soft"
    # recipe=bootstrap: how half B is shared among the chain's links
    # ("disjoint" slices, or "reuse_b": all of B for every link).
    config.bootstrap = ml_collections.ConfigDict({"pool": "disjoint"})
    # recipe=saliency: probe layers, e.g. "3,-1" (-1 = the output, k =
    # after block k); "" = the middle block and the output.
    config.saliency = ml_collections.ConfigDict({"layers": ""})
    # recipe=synthetic: the supervisor is half B's (and the test set's) gold
    # labels corrupted by a seeded rule (w2s_jax/train/synthetic.py), no
    # model trained. `kind`: "flip" (each example wrong with probability
    # error_rate), "class_conditional" (gold class c wrong with probability
    # rates[c]; rates "" = all errors on class 0 at the rate giving
    # error_rate overall), "length" (errors only on texts longer than the
    # `length_quantile` of half B's character lengths) or "keyword" (errors
    # only on texts the regex `keyword` matches, case-insensitive). The
    # systematic kinds put round(error_rate * N) errors on matching
    # examples, or all of them when fewer match (the results record the
    # realised rate). `confidence`: the soft label's probability of the
    # supervisor's class (1.0 = hard labels).
    # `kinds` (e.g. "flip,length,keyword,class_conditional"; "" = just
    # `kind`) runs one supervisor and student per kind in one run and one
    # table, all at the same error rate: which errors a student imitates,
    # in one command.
    config.synthetic = ml_collections.ConfigDict({
        "kind": "flip", "kinds": "", "error_rate": 0.2, "rates": "",
        "length_quantile": 0.5, "keyword": "", "confidence": 1.0})
    # recipe=ensemble: every model but the last (m1 .. m(n-1)) is trained on
    # gold half A; their predictions on half B, combined by `combine`
    # ("mean" probability, or "vote": the one-hot majority of their argmaxes,
    # ties broken by the mean), supervise the last model, as does each
    # supervisor alone for comparison. recipe=cosupervision (Liu & Alahi
    # 2024) uses the same supervisors and reroutes each example to the one
    # its student agrees with most, `rounds` times (w2s_jax/train/supervisors.py).
    config.ensemble = ml_collections.ConfigDict({"combine": "mean"})
    config.cosupervision = ml_collections.ConfigDict({"rounds": 2})
    # recipe=prompting (decoders): the last model scores each test example
    # by the next-token log-probability of each class's verbalizer
    # (`verbalizers`, "|"-separated in class order, each one token), after
    # `instruction` and `shots` demonstrations from half B labelled with
    # gold or with the weak model's labels, each rendered by `template`
    # ({text}) followed by its verbalizer; demonstrations are dropped from
    # the left until the prompt fits config.max_ctx. `calibrate` divides
    # by the content-free prior (the prompt with text "N/A").
    config.prompting = ml_collections.ConfigDict({
        "shots": 8, "verbalizers": " No| Yes", "template": "{text}\nAnswer:",
        "instruction": "", "calibrate": False})
    # Generative finetuning (decoders): with `epochs` > 0, the last model is
    # first trained with the next-token loss on the task's own text (no
    # labels; `text`: "pool" = every train-pool text), and those weights
    # start both its ceiling and its weak-to-strong stages, as in the paper.
    # `lr` None = the model's finetuning lr.
    config.generative = ml_collections.ConfigDict({
        "epochs": 0, "text": "pool",
        "lr": ml_collections.FieldReference(None, field_type=float)})
    # Chess puzzles (tasks chess and chess_binary; w2s_jax/data/
    # chess_puzzles.py): `n_puzzles` positions from seeded play (`seed`,
    # `min_plies`..`max_plies` plies, each a random legal move with
    # probability `random_move_prob`, else Stockfish's depth-1 move), kept
    # when Stockfish at `depth` (capped at `time_limit` seconds when > 0)
    # finds a best move `margin_cp` centipawns ahead of the second; shown as
    # the move list or the FEN (`view`); the chess task offers `candidates`
    # moves. `engine` "" = stockfish on PATH or /usr/games/stockfish;
    # `cache_dir` "" = ~/.cache/w2s_jax/chess.
    config.chess = ml_collections.ConfigDict({
        "n_puzzles": 1000, "seed": 0, "min_plies": 8, "max_plies": 40,
        "random_move_prob": 0.5, "depth": 8, "time_limit": 0.0,
        "margin_cp": 150, "view": "moves", "candidates": 4, "engine": "",
        "cache_dir": ""})
    # Early stopping for every training stage: evaluate every `eval_every`
    # steps (0 = off) on the gold test set and on a validation slice
    # (`val_fraction` of the stage's own training examples, held out), and
    # report the final, oracle and honest choices (README "Early stopping").
    config.early_stopping = ml_collections.ConfigDict(
        {"eval_every": 0, "val_fraction": 0.1})

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32
    config.train.minibatch_size = 32  # per step; batch_size / this = accumulation
    # Batches shorter than a stage's longest take minibatches of more rows,
    # up to the same tokens (memory) as minibatch_size rows at the longest.
    config.train.minibatch_by_tokens = True
    # Train and predict with several examples per row, each attending to
    # itself only (w2s_jax/data/packing.py): no padding between short
    # examples, the same logits up to rounding.
    config.train.pack = True
    # Finetune a token table of only the rows the run's examples use, their
    # ids renumbered (w2s_jax/models/vocabulary.py): the same predictions,
    # a smaller gradient and Adam state.
    config.train.compact_vocab = True
    config.train.epochs = 2
    config.train.lr_schedule = "cosine"  # cosine decay to 0 over all steps
    config.train.warmup_steps = 0
    config.train.weight_decay = 0.0
    config.train.eval_batch_size = 64  # examples a batch; packed: rows
    config.train.log_every = 10  # steps between progress lines
    # Training curves besides the console (w2s_jax/core/metric_writers.py):
    # at every progress line (train/loss, train/examples_per_s) and every
    # early-stopping evaluation (eval/test_accuracy, eval/val_accuracy).
    # `tensorboard`: event files in <workdir>/tensorboard/<stage>-<key>/,
    # one TensorBoard run per stage, if tensorboardX is installed
    # (pip install -e ".[logs]"); without it, only the console (and one
    # info line in the log file). `wandb`: one W&B run per stage in
    # `wandb_project`, if wandb is installed (else one warning; the run goes
    # on). Only process 0 writes. Neither changes what is computed.
    config.logs = ml_collections.ConfigDict({
        "tensorboard": True, "wandb": False, "wandb_project": "w2s_jax"})

    # Device mesh: axis name -> size, -1 fills with the remaining devices.
    # data splits batches; fsdp splits batches and also parameters and
    # optimizer state; tensor splits MLP units, attention heads, vocabulary.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # Backbone compute dtype: "float32" or "bfloat16". Parameters, optimizer
    # state, the head, logits and losses stay float32 either way.
    config.compute_dtype = "float32"
    # Matmul precision: "default" (JAX's for the platform: float32 sums of
    # float32 products on CPU) or "bfloat16" (operands rounded to bfloat16,
    # products summed in float32, on every platform; where a CPU has AMX
    # or AVX512-BF16 the projections' matmuls run 4-7x faster and a MiniLM
    # train step about 2x: README "Matmul precision").
    config.matmul_precision = "default"
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


def _loss_params() -> ml_collections.ConfigDict:
    """Every loss's parameters, unset (None = the loss's default)."""
    from w2s_jax.train import losses
    return ml_collections.ConfigDict({
        name: ml_collections.FieldReference(None, field_type=kind)
        for name, kind in sorted(losses.param_fields().items())})


def model_list(config: ml_collections.ConfigDict) -> list:
    """The run's models, weakest first: config.models m1, m2, ... in order,
    or [weak, strong] when config.models is empty."""
    if not len(config.models):
        return [config.weak, config.strong]
    return [config.models[f"m{i + 1}"] for i in range(len(config.models))]


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise UsageError (a ValueError) naming the bad value and the valid
    choices."""
    try:
        _validate(config)
    except UsageError:
        raise
    except ValueError as err:  # a registry's own check (losses, models...)
        raise UsageError(str(err)) from None


def _validate(config: ml_collections.ConfigDict) -> None:
    # Local imports: the registries pull in heavy modules (datasets,
    # transformers) that a bare config file should not need.
    from w2s_jax.core import sharding
    from w2s_jax.train import labels, losses, steps
    from w2s_jax.data import tasks
    from w2s_jax.models import registry

    _check_keys(config, base_config(), prefix="config")
    from w2s_jax.data import tfds_tasks, user_tasks
    if not (user_tasks.is_file_task(config.task)
            or tfds_tasks.is_tfds_task(config.task)):
        _check_choice("config.task", config.task,
                      tasks.task_names() + [f"{user_tasks.PREFIX}<path>",
                                            f"{tfds_tasks.PREFIX}<builder>"])
    elif config.task_fields.num_classes < 2 or (
            config.task_fields.num_classes > 2 and config.task_fields.choices):
        raise UsageError(
            f"config.task_fields.num_classes={config.task_fields.num_classes} "
            f"must be at least 2, and 2 for a multiple-choice file (its "
            f"examples are right/wrong candidates)")
    elif config.task_fields.text_pair and config.task_fields.choices:
        raise UsageError("config.task_fields.text_pair and .choices are both "
                         "set; a file is either pairs of texts or multiple "
                         "choice: leave one empty")
    _check_choice("config.loss", config.loss, sorted(losses.LOSSES))
    for loss in sweep_values(config.losses, str, "config.losses"):
        _check_choice("config.losses", loss, sorted(losses.LOSSES))
    sweep_values(config.seeds, int, "config.seeds")
    sweep_values(config.saliency.layers, int, "config.saliency.layers", "3,-1")
    _check_sweep_conflicts(config)
    _check_choice("config.overlength", config.overlength, OVERLENGTH_POLICIES)
    _check_choice("config.ceiling_half", config.ceiling_half, CEILING_HALVES)
    _check_choice("config.train.lr_schedule", config.train.lr_schedule,
                  LR_SCHEDULES)
    _check_choice("config.compute_dtype", config.compute_dtype,
                  list(steps.COMPUTE_DTYPES))
    _check_choice("config.matmul_precision", config.matmul_precision,
                  MATMUL_PRECISIONS)
    _check_choice("config.remat", config.remat, list(sharding.REMAT_POLICIES))
    _check_models(config)
    for field, model in model_fields(config):
        registry.check_model_name(model.name, field=f"{field}.name")
        _check_choice(f"{field}.head_init", model.head_init, HEAD_INITS)
        _check_choice(f"{field}.mode", model.mode, MODES)
        if model.mode == "reward":
            _check_reward(config, field, model)
        _check_choice_mode(config, field, model)
        _check_lora(config, field, model)
        _check_choice(f"{field}.pooling", model.pooling, POOLINGS)
    from w2s_jax.experiment import recipes
    from w2s_jax.experiment.recipes import bootstrap
    _check_choice("config.recipe", config.recipe, sorted(recipes.RECIPES))
    _check_choice("config.bootstrap.pool", config.bootstrap.pool, bootstrap.POOLS)
    from w2s_jax.train import supervisors
    _check_choice("config.ensemble.combine", config.ensemble.combine,
                  supervisors.COMBINES)
    if config.cosupervision.rounds < 1:
        raise UsageError(f"config.cosupervision.rounds="
                         f"{config.cosupervision.rounds!r} must be a positive "
                         f"integer (how many times the examples are rerouted "
                         f"after round 0), e.g. 2")
    _check_choice("config.weak_labels", config.weak_labels, labels.LABEL_KINDS)
    _check_recipe_models(config)
    _check_synthetic(config)
    _check_generative(config)
    _check_prompting(config)
    run_losses = sweep_values(config.losses, str) or [config.loss]
    set_params = {k: v for k, v in config.loss_params.to_dict().items()
                  if v is not None}
    for loss in run_losses:
        losses.user_params(loss, set_params, run_losses)
    es = config.early_stopping
    if es.eval_every < 0 or not 0 < es.val_fraction < 1:
        raise UsageError(f"config.early_stopping needs eval_every >= 0 (0 = "
                         f"off) and 0 < val_fraction < 1, got {es.to_dict()}")
    for field in ("n_train", "n_test", "max_ctx", "train.batch_size",
                  "train.minibatch_size", "train.epochs",
                  "train.eval_batch_size"):
        value = _get(config, field)
        if value is None or value <= 0:
            raise UsageError(f"config.{field} must be a positive integer, "
                             f"got {value!r}")
    if config.max_ctx < MIN_CTX:
        raise UsageError(
            f"config.max_ctx={config.max_ctx} is below {MIN_CTX} tokens: every "
            f"example would be cut to almost nothing; set --config.max_ctx to "
            f"the model's context (e.g. 512 or 1024)")
    if config.checkpoint_every_steps < 0:
        raise UsageError(f"config.checkpoint_every_steps must be >= 0 (0 = "
                         f"only on SIGTERM), got {config.checkpoint_every_steps}")
    if config.distributed.num_processes < 0 or config.distributed.process_id < -1:
        raise UsageError(f"config.distributed.num_processes must be >= 0 and "
                         f"process_id >= -1 (0 / -1 = not set), got "
                         f"{config.distributed.to_dict()}")
    if config.train.batch_size % config.train.minibatch_size:
        raise UsageError(
            f"config.train.batch_size ({config.train.batch_size}) must be a "
            f"multiple of config.train.minibatch_size "
            f"({config.train.minibatch_size})")


def sweep_values(text: str, kind, field: str = "the list",
                 example: str = "0,1,2") -> list:
    """"0,1,2" -> [0, 1, 2]; names the field and its bad entry if any."""
    values = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            values.append(kind(item))
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(
                kind, kind.__name__)
            raise UsageError(f"{field}={text!r}: {item!r} is not {what}; give "
                             f"comma-separated values, e.g. --{field}={example}"
                             ) from None
    return values


def _check_sweep_conflicts(config) -> None:
    """`seed` and `loss` together with `seeds` / `losses`: the sweep would
    win without a word, so one of the two is a mistake. "Given" means
    changed from base_config's default."""
    base = base_config()
    for single, sweep in (("seed", "seeds"), ("loss", "losses")):
        if sweep_values(config[sweep], str) and config[single] != base[single]:
            raise UsageError(
                f"config.{single}={config[single]!r} and config.{sweep}="
                f"{config[sweep]!r} are both set, and the sweep would ignore "
                f"config.{single}: to sweep, put {config[single]} in "
                f"config.{sweep} and pass --config.{single}={base[single]} "
                f"(the default; a config file may set it); to run "
                f"{config[single]} alone, pass --config.{sweep}= (empty)")


def _check_recipe_models(config) -> None:
    """What a recipe needs of the model list, known before any model loads."""
    models = model_list(config)
    if config.recipe == "bootstrap" and len(models) < 3:
        raise UsageError(
            f"config.recipe='bootstrap' needs at least 3 models in "
            f"config.models (m1 < m2 < m3 ..., see configs/bootstrap_sst2.py), "
            f"got {len(models)}; with two models use config.recipe='w2s'")
    if config.recipe in ("ensemble", "cosupervision") and len(models) < 2:
        raise UsageError(
            f"config.recipe={config.recipe!r} needs at least 2 models in "
            f"config.models (supervisors m1 .. m(n-1), then the student), got "
            f"{len(models)}")
    if config.recipe == "saliency" and models[-1].name == "bow-tfidf":
        raise UsageError(
            "config.recipe='saliency' needs a transformer as the strong (last) "
            "model, got 'bow-tfidf'")
    if config.recipe == "prompting":
        _check_last_is_decoder(config, "config.recipe='prompting' needs a "
                                       "decoder as the last model")


def _check_prompting(config) -> None:
    """config.prompting, whatever the recipe (a sweep must not fail late)."""
    import string
    p = config.prompting
    if isinstance(p.shots, bool) or not isinstance(p.shots, int) or p.shots < 0:
        raise UsageError(f"config.prompting.shots={p.shots!r} must be an "
                         f"integer >= 0 (demonstrations per prompt; 0 = "
                         f"zero-shot only)")
    entries = p.verbalizers.split("|")
    if len(entries) < 2 or not all(entries):
        raise UsageError(f"config.prompting.verbalizers={p.verbalizers!r} "
                         f"must be at least 2 non-empty verbalizers separated "
                         f"by '|', one per class in class order, e.g. "
                         f"' negative| positive'")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(p.template)
                  if name is not None}
        if fields == {"text"}:  # a bad conversion or spec ("{text:d}")
            p.template.format(text="")
    except ValueError as err:  # unbalanced braces, or the above
        fields = {f"<{type(err).__name__}: {err}>"}
    if fields != {"text"}:
        raise UsageError(f"config.prompting.template={p.template!r} must "
                         f"contain {{text}} and no other field (found "
                         f"{', '.join(sorted(fields)) or 'none'}; write a "
                         f"literal brace as {{{{ or }}}}), e.g. "
                         f"'Review: {{text}}\nSentiment:'")


def _check_synthetic(config) -> None:
    """config.synthetic: each field in its range, whatever the recipe (a
    sweep over kinds must not fail on its third run)."""
    import re
    from w2s_jax.train import synthetic
    syn = config.synthetic
    _check_choice("config.synthetic.kind", syn.kind, synthetic.KINDS)
    kinds = sweep_values(syn.kinds, str, "config.synthetic.kinds",
                         "flip,length")
    for kind in kinds:
        _check_choice("config.synthetic.kinds", kind, synthetic.KINDS)
    if len(set(kinds)) != len(kinds):
        raise UsageError(f"config.synthetic.kinds={syn.kinds!r} names a kind "
                         f"twice")
    if not 0.0 <= syn.error_rate <= 1.0:
        raise UsageError(f"config.synthetic.error_rate={syn.error_rate!r} must "
                         f"be in [0, 1] (the overall share of wrong labels)")
    for rate in sweep_values(syn.rates, float, "config.synthetic.rates",
                             "0.3,0.1"):
        if not 0.0 <= rate <= 1.0:
            raise UsageError(f"config.synthetic.rates={syn.rates!r}: {rate} is "
                             f"not in [0, 1]; give one error rate per class, "
                             f"e.g. --config.synthetic.rates=0.3,0.1")
    if not 0.0 < syn.length_quantile < 1.0:
        raise UsageError(f"config.synthetic.length_quantile="
                         f"{syn.length_quantile!r} must be in (0, 1), e.g. 0.7 "
                         f"(errors on the 30% longest texts)")
    try:
        re.compile(syn.keyword)
    except re.error as err:
        raise UsageError(f"config.synthetic.keyword={syn.keyword!r} is not a "
                         f"valid regular expression: {err}") from None
    if (config.recipe == "synthetic" and "keyword" in (kinds or [syn.kind])
            and not syn.keyword):
        raise UsageError("config.synthetic.kind='keyword' needs a regex in "
                         "config.synthetic.keyword, e.g. "
                         "--config.synthetic.keyword='\\bthe\\b'")
    if not 0.5 < syn.confidence <= 1.0:
        raise UsageError(f"config.synthetic.confidence={syn.confidence!r} must "
                         f"be in (0.5, 1] (the soft label's probability of the "
                         f"supervisor's class; 1.0 = hard labels)")


def _check_reward(config, field: str, model) -> None:
    """Mode reward scores each completion of a pair: the task must hold
    completions, and the scalar head has no label tokens to start from."""
    from w2s_jax.data import tasks
    if config.task not in tasks.COMPLETIONS:
        raise UsageError(
            f"{field}.mode='reward' scores the two completions of a preference "
            f"pair, but task {config.task!r} has no completions; tasks with "
            f"completions: {', '.join(sorted(tasks.COMPLETIONS))}")
    if model.head_init == "unembedding":
        raise UsageError(
            f"{field}.head_init='unembedding' starts the head from label "
            f"tokens, but mode='reward' has a scalar reward head; use 'zeros' "
            f"or 'normal'")


def _check_lora(config, field: str, model) -> None:
    """LoRA adapts a finetuned transformer's projections."""
    from w2s_jax.models import lora
    cfg = model.lora
    if cfg.rank < 0 or cfg.alpha <= 0:
        raise UsageError(f"{field}.lora.rank={cfg.rank!r} must be >= 0 (0 = no "
                         f"LoRA) and {field}.lora.alpha={cfg.alpha!r} positive")
    _check_choice(f"{field}.lora.base_dtype", cfg.base_dtype, lora.BASE_DTYPES)
    if not cfg.rank:
        return
    if model.mode == "features" or model.name == "bow-tfidf":
        raise UsageError(f"{field}.lora.rank={cfg.rank} adapts a finetuned "
                         f"transformer; {field} is {model.name!r} in mode "
                         f"{model.mode!r}: use mode 'finetune' (or rank 0)")
    if model.linear_probe:
        raise UsageError(f"{field}.lora.rank={cfg.rank} trains adapters inside "
                         f"the backbone, which linear_probe=True freezes; set "
                         f"one or the other")
    if config.recipe == "saliency":
        raise UsageError(f"{field}.lora.rank={cfg.rank}: the saliency recipe "
                         f"probes the finetuned backbone's features, which "
                         f"do not include LoRA adapters; use rank 0")
    last = model_list(config)[-1]
    if config.generative.epochs and model is last:
        raise UsageError(f"{field}.lora.rank={cfg.rank} with "
                         f"config.generative.epochs={config.generative.epochs}: "
                         f"the generative finetune trains the whole model, "
                         f"without adapters; use one or the other")


def _check_choice_mode(config, field: str, model) -> None:
    """Task chess is scored candidate by candidate, in mode choice, which
    fits no other task; chess settings are checked for both chess tasks."""
    from w2s_jax.data import chess_puzzles, tasks
    from w2s_jax.models import registry
    if config.task in chess_puzzles.TASKS:
        chess_puzzles.check_settings(config.chess.to_dict())
    if model.mode == "choice" and model.head_init == "unembedding":
        raise UsageError(f"{field}.head_init='unembedding' starts a head from "
                         f"label tokens, but mode='choice' scores each "
                         f"candidate (by the LM head, or a scalar head); use "
                         f"'zeros' or 'normal'")
    if model.mode in ("choice", "reward") and model.name == "bow-tfidf":
        raise UsageError(f"{field}.mode={model.mode!r} scores token sequences; "
                         f"'bow-tfidf' is a bag of words: use mode 'features'")
    spec = registry.MODELS.get(model.name)
    if (model.mode == "choice" and model.linear_probe and spec is not None
            and spec.family in registry.DECODER_FAMILIES):
        from w2s_jax.train import steps  # a hub decoder is checked once loaded
        raise UsageError(f"{field}: " + steps.LM_PROBE_ERROR.format(name=model.name))
    if (model.mode == "choice") == (config.task in tasks.CHOICES):
        return
    if model.mode == "choice":
        raise UsageError(
            f"{field}.mode='choice' scores each candidate of a task whose label "
            f"picks one (tasks: {', '.join(sorted(tasks.CHOICES))}); task "
            f"{config.task!r} has none: use mode 'finetune' or 'features'")
    raise UsageError(
        f"task {config.task!r} scores each candidate move: set "
        f"{field}.mode='choice' (or use task chess_binary, one (position, "
        f"move) pair per example, with any mode)")


def _check_generative(config) -> None:
    from w2s_jax.experiment import generative
    gen = config.generative
    if gen.epochs < 0:
        raise UsageError(f"config.generative.epochs={gen.epochs!r} must be >= 0 "
                         f"(0 = no generative finetuning)")
    _check_choice("config.generative.text", gen.text, generative.TEXTS)
    from w2s_jax.data import tasks
    if gen.text == "completions" and config.task not in tasks.COMPLETIONS:
        raise UsageError(
            f"config.generative.text='completions' needs a task whose examples "
            f"hold completions to compare ({', '.join(sorted(tasks.COMPLETIONS))}"
            f"); task {config.task!r} has none: use 'pool'")
    if gen.lr is not None and gen.lr <= 0:
        raise UsageError(f"config.generative.lr={gen.lr!r} must be positive, or "
                         f"None for the model's finetuning lr")
    if gen.epochs:
        _check_last_is_decoder(
            config, f"config.generative.epochs={gen.epochs} trains the last "
                    f"model as a language model (or set "
                    f"--config.generative.epochs=0)")


def _check_last_is_decoder(config, why: str) -> None:
    """The last model is a decoder, where its registry name tells the
    family; a hub id or directory is checked once loaded
    (registry.check_tied_decoder)."""
    from w2s_jax.models import registry
    last = model_list(config)[-1].name
    spec = registry.MODELS.get(last)
    if spec is not None and spec.family not in registry.DECODER_FAMILIES:
        decoders = sorted(n for n, m in registry.MODELS.items()
                          if m.family in registry.DECODER_FAMILIES)
        raise UsageError(f"{why}; {last!r} is a {spec.family} model. "
                         f"Decoders: {', '.join(decoders)}")


def check_config_flag(argv: list[str]) -> None:
    """The --config file exists, parses, and defines get_config.

    ml_collections would otherwise fail with a traceback, calling the file
    "module 'config_config'". Nothing in the file is run here.
    """
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            value = arg[len("--config="):]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    if value is None:
        return  # absl reports the missing required flag
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
        directory = os.path.dirname(path) or "."
        held = (sorted(n for n in os.listdir(directory) if n.endswith(".py"))
                if os.path.isdir(directory) else [])
        there = (f"; config files in {directory}: {', '.join(held)}" if held
                 else "; the configs are in configs/ (e.g. configs/smoke.py)")
        raise UsageError(f"--config={value}: {path} "
                         f"{'is a directory' if os.path.isdir(path) else 'does not exist'}"
                         f"{there}")
    with open(path, "rb") as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as err:
        line = getattr(err, "lineno", None)
        raise UsageError(f"config file {path}{f', line {line}' if line else ''}"
                         f": {getattr(err, 'msg', err)}; it must be valid Python "
                         f"defining get_config()") from None
    if not _binds_get_config(tree):
        raise UsageError(
            f"config file {path} defines no get_config(); a config file "
            f"defines get_config() returning the experiment's ConfigDict, "
            f"starting from w2s_jax.config.base_config() (see configs/smoke.py)")


def _binds_get_config(tree: ast.Module) -> bool:
    """Whether the module defines, assigns or imports get_config anywhere
    (lenient: a star import counts)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bound = [node.name]
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound = [node.id]
        elif isinstance(node, ast.ImportFrom):
            bound = [alias.asname or alias.name for alias in node.names]
        else:
            continue
        if "get_config" in bound or "*" in bound:
            return True
    return False


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
            if prefix == "config.models":
                node, prefix = model_config(""), f"{prefix}.{part}"
                continue  # the slots (m1, m2, ...) are the config file's
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                valid = (", ".join(sorted(node.keys()))
                         if isinstance(node, ml_collections.ConfigDict) else "none")
                raise UsageError(f"unknown config key {prefix}.{part} in {arg!r}; "
                                 f"valid keys at {prefix}: {valid}")
            node, prefix = node[part], f"{prefix}.{part}"


def model_fields(config) -> list[tuple[str, ml_collections.ConfigDict]]:
    if not len(config.models):
        return [("config.weak", config.weak), ("config.strong", config.strong)]
    return [(f"config.models.m{i + 1}", config.models[f"m{i + 1}"])
            for i in range(len(config.models))]


def _check_models(config) -> None:
    """config.models: slots m1..mn, each a full model config; and not
    together with a changed weak/strong (one of them would be ignored)."""
    slots = list(config.models.keys())
    expected = [f"m{i + 1}" for i in range(len(slots))]
    if sorted(slots) != sorted(expected):
        raise UsageError(f"config.models must have slots {', '.join(expected)} "
                         f"(weakest first), got {', '.join(slots)}")
    reference = model_config("")
    for slot in slots:
        _check_keys(config.models[slot], reference, f"config.models.{slot}")
    if slots:
        base = base_config()
        for role in ("weak", "strong"):
            if config[role].to_dict() != base[role].to_dict():
                raise UsageError(
                    f"config.{role} is set but config.models is used, so it "
                    f"would be ignored; put the model in config.models "
                    f"instead")


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"{field}={value!r} is not valid; choose one of: "
                         f"{', '.join(map(str, choices))}")


def _check_keys(config, reference, prefix: str) -> None:
    """Unknown keys are typos that would otherwise be silently ignored."""
    for key in config.keys():
        if key not in reference:
            raise UsageError(
                f"unknown config key {prefix}.{key}; valid keys at {prefix}: "
                f"{', '.join(sorted(reference.keys()))}")
        value, ref = config[key], reference[key]
        if isinstance(value, ml_collections.ConfigDict) and key != "models":
            ref = ref if isinstance(ref, ml_collections.ConfigDict) else None
            if ref is not None:
                _check_keys(value, ref, f"{prefix}.{key}")
