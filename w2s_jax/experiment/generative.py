"""The generative finetuning stage, and the weights it hands on.

With config.generative.epochs > 0, the last model (the strong student of
every recipe) first learns the task's unlabelled text with the next-token
loss; `Context.learner` then starts every stage of that model (ceiling,
weak-to-strong, probes on its features) from these weights instead of the
checkpoint's, as the paper does so that the comparison stays fair. The
stage goes through the stage cache like any other: trained once, resumable
from its checkpoints, keyed by everything that determines it, and the key
is part of every later stage's key.

Its record holds the per-token NLL of held-out task text (the test set's
texts, never their labels) before and after, which says whether it learned
anything.
"""
from __future__ import annotations

import dataclasses
import os

import flax
import jax
import numpy as np

from w2s_jax.core import metric_writers, stages
from w2s_jax.core.progress import log
from w2s_jax.data import batching, tasks
from w2s_jax.models import registry
from w2s_jax.train import generative, loop, steps

TEXTS = ("pool", "completions")
# Held-out examples for the before/after NLL: enough for a stable mean.
HELDOUT_EXAMPLES = 512
PARAM_PREFIX = "params/"


def lm_texts(ctx, index: int, text: str) -> list[np.ndarray]:
    """Token ids the stage trains on: every train-pool example ("pool"), or
    each completion of a preference pair alone ("completions")."""
    if text == "pool":
        return ctx.tokens.ids[index]["train"]
    split = tasks.COMPLETIONS[ctx.config.task]  # config.validate checked it
    texts = [t for pair in ctx.texts["train"] for t in split(pair)]
    return batching.tokenize(ctx.models[index].tokenizer, texts,
                             max_ctx=ctx.config.max_ctx,
                             overlength="truncate").ids


def generative_stage(ctx, index: int, settings: steps.TrainSettings,
                     learner_spec: dict) -> stages.StageResult:
    """Model `index` trained with the next-token loss (see module doc)."""
    config, model = ctx.config, ctx.models[index]
    registry.check_tied_decoder(model, "generative finetuning "
                                       "(config.generative.epochs > 0)")
    gen = config.generative
    ids = lm_texts(ctx, index, gen.text)
    heldout = ctx.tokens.ids[index]["test"][:HELDOUT_EXAMPLES]
    # The next-token loss trains on padded rows (packing is a classifier's).
    settings = dataclasses.replace(settings, epochs=gen.epochs,
                                   lr=gen.lr or settings.lr, head_lr=None,
                                   pack=False)
    spec = {"learner": learner_spec,
            "train": settings.key_fields(),
            "loss": generative.NEXT_TOKEN.name, "loss_params": {},
            "seed": config.seed, "text": gen.text,
            "train_data": [stages.fingerprint(*ids)],
            "heldout_data": [stages.fingerprint(*heldout)]}

    def compute(inprogress_dir):
        module = steps.build_classifier(
            model, num_classes=2, linear_probe=False, head_init="zeros",
            pooling="last", compute_dtype=config.compute_dtype,
            remat=config.remat)
        params = steps.init_params(module, model, head_init="zeros",
                                   seed=config.seed, mesh=ctx.mesh)["backbone"]
        backbone = module.backbone
        nll = {"before": _heldout(model, backbone, params, heldout, settings, ctx)}
        writer = metric_writers.for_stage(config.logs, ctx.workdir,
                                          "generative", stages.stage_key(spec))
        try:
            params, record = loop.finetune(
                name="generative", forward=generative.lm_forward(model, backbone),
                params=params, make_inputs=loop.token_inputs(
                    ids, pad_id=model.tokenizer.pad_id, max_ctx=config.max_ctx),
                lengths=np.array([len(x) for x in ids]),
                train_targets=np.zeros((len(ids), 1), np.float32),
                settings=settings, loss=generative.NEXT_TOKEN, loss_params={},
                mesh=ctx.mesh, seed=config.seed,
                checkpoint_dir=os.path.join(inprogress_dir, "ckpt"),
                checkpoint_every=config.checkpoint_every_steps, writer=writer)
        finally:
            writer.close()
        nll["after"] = _heldout(model, backbone, params, heldout, settings, ctx)
        record["heldout_nll"] = nll
        log(f"[generative] held-out next-token NLL {nll['before']:.4f} -> "
            f"{nll['after']:.4f} nats per token ({len(heldout)} test texts)")
        flat = flax.traverse_util.flatten_dict(_to_host(params), sep="/")
        return record, {PARAM_PREFIX + k: v for k, v in flat.items()}

    result = stages.run_stage(ctx.workdir, "generative", spec, compute,
                              store=ctx.store)
    result.record["description"] = (f"next-token loss on {gen.text} text "
                                    f"({len(ids)} sequences), no labels")
    result.record["model"] = model.name
    return result


def backbone_params(stage: stages.StageResult) -> dict:
    """The stage's trained backbone, as the numpy tree init_params takes."""
    flat = {k[len(PARAM_PREFIX):]: v for k, v in stage.arrays.items()
            if k.startswith(PARAM_PREFIX)}
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def _heldout(model, backbone, params, ids, settings, ctx) -> float:
    return generative.heldout_nll(model, backbone, params, ids,
                                  batch_size=settings.eval_batch_size,
                                  max_ctx=settings.max_ctx, mesh=ctx.mesh)


def _to_host(params):
    """Numpy copies of (possibly sharded, multi-host) parameters."""
    from jax.experimental import multihost_utils
    return jax.tree.map(
        lambda x: np.asarray(x if x.is_fully_addressable else
                             multihost_utils.process_allgather(x, tiled=True)),
        params)
