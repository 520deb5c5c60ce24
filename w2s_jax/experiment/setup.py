"""Everything a recipe stands on: the task's examples, the models, and a
factory of learners (a model to finetune, or a linear head on frozen
features of any layer, extracted once and cached).

A recipe sees models by their position in the config's ordered list
(`Context.models`, weakest first) and examples by their index into the
train pool or the test set; it never touches meshes, tokenizers or files.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from w2s_jax import config as config_lib
from w2s_jax.core import sharding, stages
from w2s_jax.core.errors import UsageError
from w2s_jax.core.object_store import ObjectStore
from w2s_jax.core.progress import log
from w2s_jax.data import sources, splits, tasks, tokenize
from w2s_jax.models import lora, registry
from w2s_jax.train import features, learners, steps

# Adam's learning rate for a linear head on standardised frozen features
# (the release's vision probes used 1e-3).
FEATURE_HEAD_LR = 1e-3


@dataclasses.dataclass
class Context:
    config: ml_collections.ConfigDict
    workdir: str
    mesh: object
    data: splits.TaskData
    tokens: tokenize.Tokenized
    models: list  # registry.ResolvedModel, weakest first
    model_configs: list  # their config.models entries
    train_labels: np.ndarray  # the kept train pool's gold labels
    test_labels: np.ndarray
    train_groups: np.ndarray  # group id of each kept train example
    num_classes: int
    # The bucket shared by shards on other machines (config.store), or None
    # for the workdir itself.
    store: ObjectStore | None = None
    _learners: dict = dataclasses.field(default_factory=dict)
    _starts: dict = dataclasses.field(default_factory=dict)
    # model index -> its generative stage (experiment/generative.py)
    generative: dict = dataclasses.field(default_factory=dict)

    @property
    def texts(self) -> dict[str, list[str]]:
        return {"train": [self.data.train_texts[i] for i in self.tokens.kept["train"]],
                "test": [self.data.test_texts[i] for i in self.tokens.kept["test"]]}

    @property
    def test_difficulty(self) -> np.ndarray | None:
        """Each kept test example's difficulty level, where the task has one."""
        levels = self.data.test_difficulty
        return None if levels is None else levels[self.tokens.kept["test"]]

    def gold(self, indices: np.ndarray) -> np.ndarray:
        """One-hot gold targets of train-pool examples."""
        return np.eye(self.num_classes, dtype=np.float32)[self.train_labels[indices]]

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """Seeded disjoint halves A and B of the train pool, whole groups
        to one side (examples that share a passage never straddle)."""
        return splits.split_halves(len(self.train_labels), self.config.seed,
                                   groups=self.train_groups)

    def model_name(self, index: int) -> str:
        return self.models[index].name

    def learner(self, index: int, *, mode: str | None = None,
                layer: int | None = None):
        """A learner for model `index`; `mode`/`layer` override its config
        (a saliency probe reads features of any layer of any model)."""
        model, model_cfg = self.models[index], self.model_configs[index]
        mode = mode or model_cfg.mode
        if model.family == registry.BOW_FAMILY:
            mode = "features"
        layer = model_cfg.feature_layer if layer is None else layer
        key = (index, mode, layer if mode == "features" else None)
        if key not in self._learners:
            learner = self._learners[key] = _make_learner(self, index, mode, layer)
            vocab = getattr(learner, "vocab", None)
            if vocab is not None:
                log(f"[{learner.role}] {model.name}: a compact vocabulary, the "
                    f"{len(vocab.ids):,} token ids of the run's examples and "
                    f"the pad, of {vocab.full_size:,} (a table of "
                    f"{vocab.size:,} rows; config.train.compact_vocab=False "
                    f"trains the whole)")
        return self._learners[key]

    def start(self, index: int):
        """(stage key, numpy backbone) that model `index`'s stages start
        from instead of its checkpoint, or None: the generative finetune of
        the last model when config.generative.epochs > 0."""
        if index != len(self.models) - 1 or not self.config.generative.epochs:
            return None
        if index not in self._starts:
            from w2s_jax.experiment import generative
            model = self.models[index]
            stage = generative.generative_stage(
                self, index, _settings(model, self.model_configs[index],
                                       self.config, "finetune"),
                {"name": model.name, "source": model.source,
                 "backbone": dataclasses.asdict(model.backbone_config),
                 "compute_dtype": self.config.compute_dtype})
            self.generative[index] = stage
            self._starts[index] = (stage.key, generative.backbone_params(stage))
        return self._starts[index]

    def probe_learner(self, index: int, feature_spec: dict,
                      train_feats: np.ndarray, test_feats: np.ndarray):
        """A linear head on given features of model `index` (e.g. of a
        finetuned copy of it), standardised like any frozen features."""
        settings = _settings(self.models[index], self.model_configs[index],
                             self.config, "features")
        train_feats, test_feats = features.standardize(train_feats, test_feats)
        return learners.FeatureLearner(f"m{index + 1}", feature_spec, settings,
                                       {"train": train_feats, "test": test_feats})


def build(config: ml_collections.ConfigDict, workdir: str) -> Context:
    """Load the task, resolve and tokenize every model (one run's setup)."""
    mesh = sharding.make_mesh(config.mesh.to_dict())
    _check_divisible(config, mesh)
    data = splits.load_task(
        config.task, data_dir=sources.resolve_data_dir(config.data_dir or None),
        seed=config.seed, n_train=config.n_train, n_test=config.n_test,
        balance=config.balance, task_fields=config.task_fields.to_dict(),
        tfds_data_dir=config.tfds_data_dir or None, chess=config.chess.to_dict())
    log(f"[data] {config.task}: {len(data.train_texts)} train pool, "
        f"{len(data.test_texts)} test ({data.provenance.get('source')})")
    model_configs = config_lib.model_list(config)
    models = [registry.resolve(cfg.name) for cfg in model_configs]
    for index, model in enumerate(models):
        log(f"[model {index + 1}] {model.name} ({model.family}) from "
            f"{model.source['kind']}")
    tokens = tokenize.tokenize_jointly(
        {"train": data.train_texts, "test": data.test_texts},
        {"train": data.train_labels, "test": data.test_labels}, models,
        max_ctx=config.max_ctx, overlength=config.overlength, task=config.task)
    pool = len(tokens.kept["train"])
    if pool // 2 < config.train.batch_size:
        raise UsageError(
            f"config.train.batch_size={config.train.batch_size} is more than "
            f"half the train pool ({pool} examples of task {config.task!r}, "
            f"halves of {pool // 2}): no stage would train a full batch; raise "
            f"config.n_train or lower config.train.batch_size")
    train_labels = data.train_labels[tokens.kept["train"]]
    test_labels = data.test_labels[tokens.kept["test"]]
    num_classes = max(2, int(train_labels.max()) + 1, int(test_labels.max()) + 1)
    return Context(config=config, workdir=workdir, mesh=mesh, data=data,
                   tokens=tokens, models=models, model_configs=model_configs,
                   train_labels=train_labels, test_labels=test_labels,
                   train_groups=data.train_groups[tokens.kept["train"]],
                   num_classes=num_classes,
                   store=ObjectStore(config.store) if config.store else None)


def _make_learner(ctx: Context, index: int, mode: str, layer: int):
    config, model = ctx.config, ctx.models[index]
    model_cfg = ctx.model_configs[index]
    role = f"m{index + 1}"
    settings = _settings(model, model_cfg, config, mode)
    pooling = model_cfg.pooling or registry.default_pooling(model)
    ids = ctx.tokens.ids.get(index)
    start = None if model.family == registry.BOW_FAMILY else ctx.start(index)
    adapters = (None if model.family == registry.BOW_FAMILY else
                lora.spec_from_config(model_cfg.lora, model.family))
    if mode in ("reward", "choice"):
        # config.validate allowed these modes only for tasks with candidates.
        split = (tasks.COMPLETIONS if mode == "reward"
                 else tasks.CHOICES)[config.task]
        learner = (learners.PairLearner if mode == "reward"
                   else learners.ChoiceLearner)
        candidates = {side: learner.tokenize(
            model.tokenizer, [split(text) for text in texts],
            max_ctx=config.max_ctx, overlength=config.overlength)
            for side, texts in ctx.texts.items()}
        return learner(role, model, model_cfg, pooling, settings, candidates,
                       compute_dtype=config.compute_dtype, remat=config.remat,
                       start=start, lora=adapters,
                       compact_vocab=config.train.compact_vocab)
    if mode == "finetune":
        return learners.TokenLearner(role, model, model_cfg, pooling, settings,
                                     ids, compute_dtype=config.compute_dtype,
                                     remat=config.remat, start=start,
                                     lora=adapters,
                                     compact_vocab=config.train.compact_vocab)
    texts = ctx.texts
    bow = model.family == registry.BOW_FAMILY
    feature_spec = ({"name": model.name, "source": model.source} if bow else
                    {"name": model.name, "source": model.source,
                     "pooling": pooling, "layer": layer})
    if start is not None:
        feature_spec["start"] = start[0]
    fingerprint = {side: stages.fingerprint(*(ids[side] if ids else texts[side]))
                   for side in ("train", "test")}

    def compute(_):  # extraction keeps no resumable state
        if bow:
            # Fit on the whole train pool's texts (no labels), never on test.
            featurizer = registry.bow_featurizer(model).fit(texts["train"])
            return {}, {side: featurizer.transform(texts[side])
                        for side in ("train", "test")}
        module = steps.build_classifier(model, num_classes=2, linear_probe=True,
                                        head_init="zeros", pooling=pooling)
        params = steps.init_params(
            module, model, head_init="zeros", seed=config.seed, mesh=ctx.mesh,
            backbone_params=start[1] if start else None)["backbone"]
        return {}, {side: features.extract(
            model, params, ids[side], pooling=pooling, layer=layer,
            batch_size=config.train.eval_batch_size, max_ctx=config.max_ctx,
            mesh=ctx.mesh, name=f"features-{role}-{side}")
            for side in ("train", "test")}

    stage = stages.run_stage(
        ctx.workdir, "features",
        {"features": feature_spec, "data": fingerprint}, compute,
        store=ctx.store)
    feats = [stage.arrays["train"], stage.arrays["test"]]
    if not bow:
        # TF-IDF rows are already normalised; z-scoring would blow up rare terms.
        feats = features.standardize(*feats)
    return learners.FeatureLearner(role, feature_spec, settings,
                                   {"train": feats[0], "test": feats[1]})


def _settings(model, model_cfg, config, mode) -> steps.TrainSettings:
    train_cfg = config.train
    if mode == "features":
        # A linear head on fixed features: the whole batch fits in memory.
        minibatch = train_cfg.batch_size
        default_lr = (model.default_lr if model.family == registry.BOW_FAMILY
                      else FEATURE_HEAD_LR)
    else:
        minibatch = (model_cfg.minibatch_size or model.default_minibatch_size
                     or train_cfg.minibatch_size)
        minibatch, default_lr = min(minibatch, train_cfg.batch_size), model.default_lr
    if train_cfg.batch_size % minibatch:
        raise UsageError(f"config.train.batch_size ({train_cfg.batch_size}) "
                         f"must be a multiple of model {model.name!r}'s "
                         f"minibatch size ({minibatch})")
    return steps.TrainSettings(
        lr=model_cfg.lr or default_lr, head_lr=model_cfg.head_lr,
        batch_size=train_cfg.batch_size, minibatch_size=minibatch,
        epochs=model_cfg.epochs or train_cfg.epochs,
        lr_schedule=train_cfg.lr_schedule, warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        eval_batch_size=train_cfg.eval_batch_size, max_ctx=config.max_ctx,
        log_every=train_cfg.log_every,
        minibatch_by_tokens=train_cfg.minibatch_by_tokens,
        # Packing is for a classifier's tokens, not candidates or features
        # (README "Packed training rows").
        pack=train_cfg.pack and mode == "finetune")


def _check_divisible(config, mesh) -> None:
    data_size = sharding.batch_size_divisor(mesh)
    for field in ("minibatch_size", "eval_batch_size"):
        value = config.train[field]
        if value % data_size:
            raise UsageError(f"config.train.{field}={value} must be divisible "
                             f"by the mesh's batch split (data x fsdp axes) "
                             f"{data_size}")
