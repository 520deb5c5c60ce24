"""The learning-rate schedule as data: the optimizer reads the stage's
length from the train state, so stages of any length compile one program,
and it still updates exactly as optax's Adam on optax's schedules."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from w2s_jax.core import sharding
from w2s_jax.data import packing
from w2s_jax.models import registry
from w2s_jax.train import losses, steps

SETTINGS = steps.TrainSettings(
    lr=1e-3, head_lr=None, batch_size=8, minibatch_size=8, epochs=1,
    lr_schedule="cosine", warmup_steps=0, weight_decay=0.0, eval_batch_size=8,
    max_ctx=16, log_every=1)


def _optax_schedule(settings, total_steps, peak):
    """The schedules as optax builds them, with the length compiled in."""
    if settings.lr_schedule == "constant":
        return optax.constant_schedule(peak)
    if not settings.warmup_steps:
        return optax.cosine_decay_schedule(peak, decay_steps=total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=settings.warmup_steps,
        decay_steps=max(total_steps, settings.warmup_steps + 1), end_value=0.0)


@pytest.mark.parametrize("schedule,warmup,total", [
    ("cosine", 0, 10), ("cosine", 3, 10), ("cosine", 3, 3), ("cosine", 4, 2),
    ("constant", 0, 5)])
def test_learning_rate_is_optaxs_schedule(schedule, warmup, total):
    settings = dataclasses.replace(SETTINGS, lr_schedule=schedule,
                                   warmup_steps=warmup)
    expected = _optax_schedule(settings, total, 2e-5)
    for step in range(total + 3):  # past the end too: decayed to 0
        assert float(steps.learning_rate(settings, step, total, 2e-5)) == \
            pytest.approx(float(expected(step)), rel=1e-6, abs=1e-12), step


def _optax_optimizer(settings, total_steps):
    """make_optimizer as optax.adam / adamw / multi_transform would be."""
    def adam(peak):
        rate = _optax_schedule(settings, total_steps, peak)
        if settings.weight_decay:
            return optax.adamw(rate, weight_decay=settings.weight_decay)
        return optax.adam(rate)
    if settings.head_lr is None:
        return adam(settings.lr)
    return optax.multi_transform(
        {"head": adam(settings.head_lr), "backbone": adam(settings.lr)},
        {"backbone": {"w": "backbone", "b": "backbone"},
         "head": {"kernel": "head"}})


@pytest.mark.parametrize("changes", [
    {}, {"weight_decay": 0.01, "warmup_steps": 2},
    {"head_lr": 5e-2, "warmup_steps": 2}, {"lr_schedule": "constant"}])
def test_optimizer_updates_as_optax_adam(changes):
    settings = dataclasses.replace(SETTINGS, **changes)
    total = 6
    rng = np.random.default_rng(0)
    params = {"backbone": {"w": rng.normal(size=(3, 4)).astype(np.float32),
                           "b": rng.normal(size=4).astype(np.float32)},
              "head": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)}}
    ours, theirs = steps.make_optimizer(settings), _optax_optimizer(settings, total)
    ours_state, theirs_state = ours.init(params), theirs.init(params)
    # The same tree as optax's: checkpoints of either restore into the other.
    assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)
    ours_params = theirs_params = params
    for _ in range(total + 1):
        grads = jax.tree.map(
            lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        update, ours_state = ours.update(grads, ours_state, ours_params,
                                         total_steps=jnp.int32(total))
        ours_params = optax.apply_updates(ours_params, update)
        update, theirs_state = theirs.update(grads, theirs_state, theirs_params)
        theirs_params = optax.apply_updates(theirs_params, update)
        for a, b in zip(jax.tree.leaves(ours_params),
                        jax.tree.leaves(theirs_params)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_stages_of_any_length_compile_one_program():
    """The ceiling (2047 examples, 126 steps) and a student (2048, 128):
    the same program, so the second loads the first's from the cache; its
    length is in the state, and it still sets the step's rate."""
    model = registry.resolve("tiny-gpt2-random")
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal")
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh)
    rng = np.random.default_rng(0)
    ids = [rng.integers(1, 50, n).astype(np.int32) for n in (5, 9, 3, 7)]
    inputs = packing.pack(ids, np.arange(4), rows=2, length=16, pad_id=0)
    batch = sharding.to_global(mesh, {
        "inputs": tuple(x[None] for x in inputs),
        "targets": np.tile([[[0.2, 0.8]]], (1, 4, 1)).astype(np.float32)}, 1)
    tx = steps.make_optimizer(SETTINGS)
    texts, updated = [], []
    for total in (126, 128):
        step = steps.make_train_step(
            steps.module_forward(module), tx, losses.get_loss("logconf"),
            {"alpha_max": 0.75, "warmup_frac": 0.2, "schedule": "linear"},
            mesh)
        state = steps.init_state(tx, jax.tree.map(jnp.copy, params), mesh,
                                 total_steps=total)
        texts.append(step.lower(state, batch).as_text(debug_info=False))
        for _ in range(2):
            state, _ = step(state, batch)
        updated.append(jax.tree.map(np.asarray, state["params"]))
    assert texts[0] == texts[1]
    # At step 2 the cosine rate of 126 steps is below that of 128.
    moved = [np.abs(p["head"]["kernel"] - np.asarray(params["head"]["kernel"]))
             for p in updated]
    assert not np.array_equal(moved[0], moved[1])
