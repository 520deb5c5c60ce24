"""The jitted train step: mesh invariance, batch-aware accumulation, learning."""
import jax
import numpy as np
import pytest

from w2s_jax import run as run_lib
from w2s_jax.core import sharding, stages
from w2s_jax.train import loop, losses, steps
from w2s_jax.models import registry

LOSS_PARAMS = {"alpha_max": 0.5, "warmup_frac": 0.2, "schedule": "linear"}


def _settings(**overrides):
    values = dict(lr=1e-3, head_lr=None, batch_size=16, minibatch_size=8,
                  epochs=1, lr_schedule="cosine", warmup_steps=0,
                  weight_decay=0.0, eval_batch_size=16, max_ctx=64,
                  log_every=100)
    values.update(overrides)
    return steps.TrainSettings(**values)


def _batches(n_steps, n_micro, micro, length=24, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        ids = rng.integers(0, 256, (n_micro, micro, length), dtype=np.int32)
        lens = rng.integers(4, length + 1, (n_micro, micro))
        mask = (np.arange(length) < lens[..., None]).astype(np.int32)
        p1 = rng.uniform(size=(n_micro, micro, 1)).astype(np.float32)
        targets = np.concatenate([1 - p1, p1], axis=-1)
        out.append({"inputs": (ids, mask), "targets": targets})
    return out


def _run_steps(devices, batches, settings, loss_name="logconf", head_init="normal"):
    mesh = sharding.make_mesh({"data": -1}, devices=devices)
    model = registry.resolve("tiny-gpt2-random")
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init=head_init)
    params = steps.init_params(module, model, head_init=head_init, seed=0,
                               mesh=mesh)
    tx = steps.make_optimizer(settings)
    state = steps.init_state(tx, params, mesh, total_steps=len(batches))
    step = steps.make_train_step(steps.module_forward(module), tx,
                                 losses.get_loss(loss_name), LOSS_PARAMS, mesh)
    values = []
    for batch in batches:
        state, metrics = step(state, sharding.to_global(mesh, batch, 1))
        values.append(float(metrics["loss"]))
    return np.array(values), jax.tree.map(np.asarray, state["params"])


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_and_eight_devices_agree():
    assert len(jax.devices()) == 8, "conftest sets 8 virtual CPU devices"
    batches = _batches(n_steps=4, n_micro=2, micro=8)
    # SGD-like check through Adam is too sensitive near zero (Adam divides
    # 1e-9 noise by tiny second moments); a constant small lr keeps the
    # comparison about the sharded computation, not the optimizer.
    settings = _settings(lr_schedule="constant", lr=1e-4)
    loss_1, params_1 = _run_steps(jax.devices()[:1], batches, settings)
    loss_8, params_8 = _run_steps(jax.devices(), batches, settings)
    np.testing.assert_allclose(loss_1, loss_8, atol=1e-5)
    assert _max_diff(params_1, params_8) < 1e-5
    assert not np.allclose(loss_1[0], loss_1[-1]), "training changed nothing"


@pytest.mark.parametrize("loss_name", ["xent", "logconf", "product"])
def test_accumulation_matches_whole_batch(loss_name):
    """2 x 8 accumulated == 1 x 16: the confidence loss sees all 16 rows."""
    whole = _batches(n_steps=3, n_micro=1, micro=16)
    split = [jax.tree.map(lambda v: v.reshape(2, 8, *v.shape[2:]), b)
             for b in whole]
    devices = jax.devices()[:1]
    loss_whole, params_whole = _run_steps(devices, whole, _settings(), loss_name)
    loss_split, params_split = _run_steps(devices, split, _settings(), loss_name)
    np.testing.assert_allclose(loss_whole, loss_split, rtol=1e-5, atol=1e-6)
    assert _max_diff(params_whole, params_split) < 1e-4


def test_logconf_minibatch_statistics_would_differ():
    """Guard for the test above: per-minibatch hardening really differs."""
    logits = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    targets = np.tile(np.array([[0.9, 0.1]], np.float32), (16, 1))
    targets[:8] = [0.1, 0.9]  # first minibatch has prior 0.9, second 0.1
    loss = losses.get_loss("logconf")
    whole = losses.loss_value(loss, logits=logits, targets=targets,
                              progress=1.0, params=LOSS_PARAMS)
    halves = np.mean([losses.loss_value(loss, logits=logits[i:i + 8],
                                        targets=targets[i:i + 8], progress=1.0,
                                        params=LOSS_PARAMS) for i in (0, 8)])
    assert abs(float(whole) - float(halves)) > 1e-3


def test_tiny_model_learns_a_separable_task():
    """The whole finetune loop learns: a zero head must not stall training."""
    rng = np.random.default_rng(0)
    words = ["good", "bad"]
    texts, labels = [], []
    for i in range(256):
        label = i % 2
        filler = "".join(rng.choice(list("xyz "), size=rng.integers(3, 12)))
        texts.append(f"{filler} {words[label]}")
        labels.append(label)
    model = registry.resolve("tiny-gpt2-random")
    ids = [np.asarray(x, np.int32) for x in model.tokenizer.encode(texts)]
    targets = np.eye(2, dtype=np.float32)[labels]
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="zeros")
    params = steps.init_params(module, model, head_init="zeros", seed=0,
                               mesh=mesh)
    settings = _settings(epochs=4, batch_size=16, minibatch_size=16)
    forward = steps.module_forward(module)
    make_inputs = loop.token_inputs(ids, pad_id=0, max_ctx=64)
    lengths = np.array([len(x) for x in ids])
    params, record = loop.finetune(
        name="learn", forward=forward, params=params, make_inputs=make_inputs,
        lengths=lengths, train_targets=targets, settings=settings,
        loss=losses.get_loss("xent"), loss_params={}, mesh=mesh, seed=0)
    probs = loop.predict(steps.make_predict_step(forward, mesh), params,
                          make_inputs=make_inputs, lengths=lengths,
                          batch_size=16, max_ctx=64, mesh=mesh, num_classes=2)
    assert np.mean(probs.argmax(-1) == np.array(labels)) > 0.95
    assert record["steps"] == 4 * (256 // 16)
    assert record["loss_curve"][-1] < 0.3 < record["loss_curve"][0]


def _expected_give_backs(shapes):
    """A pass's events: each batch's shape, a give-back after each shape
    new in the pass, and one at its end."""
    events, seen = [], set()
    for shape in shapes:
        events.append(shape)
        if shape not in seen:
            seen.add(shape)
            events.append("give back")
    return events + ["give back"]


def _mixed_lengths(seed, record, devices, sizes=None, packable=False):
    """64 random token sequences of 3-59 tokens (several length buckets;
    `sizes`: their lengths instead) and a zero-headed tiny GPT-2 on
    `devices`: (module, params, lengths, make_inputs, mesh); make_inputs
    calls record(padded inputs) per batch and, `packable`, can pack them
    (loop.token_inputs)."""
    model = registry.resolve("tiny-gpt2-random")
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 60, 64) if sizes is None else sizes
    ids = [rng.integers(0, 256, n).astype(np.int32) for n in sizes]
    pad = loop.token_inputs(ids, pad_id=0, max_ctx=64, packable=packable)

    def make_inputs(indices, rows, rungs):
        inputs = pad(indices, rows, rungs)
        record(inputs)
        return inputs
    if packable:
        make_inputs.pack = pad.pack
    mesh = sharding.make_mesh({"data": -1}, devices=devices)
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="zeros")
    params = steps.init_params(module, model, head_init="zeros", seed=0,
                               mesh=mesh)
    return (module, params, np.array([len(x) for x in ids]), make_inputs,
            mesh)


def test_free_memory_given_back_after_each_new_shape_and_pass(monkeypatch):
    """The loops give free host memory back after each input shape's first
    call (its compile) and at the end of the pass, not at every step."""
    from w2s_jax.core import host_memory
    events = []
    monkeypatch.setattr(host_memory, "give_back_free_memory",
                        lambda: events.append("give back"))
    # Each batch's padded shape goes into the events.
    module, params, lengths, make_inputs, mesh = _mixed_lengths(
        0, lambda inputs: events.append(inputs[0].shape), jax.devices()[:1])
    forward = steps.module_forward(module)
    params, _ = loop.finetune(
        name="t", forward=forward, params=params, make_inputs=make_inputs,
        lengths=lengths, train_targets=np.full((64, 2), 0.5, np.float32),
        settings=_settings(epochs=2), loss=losses.get_loss("xent"),
        loss_params={}, mesh=mesh, seed=0)
    train_events = list(events)
    events.clear()
    predict_step = steps.make_predict_step(forward, mesh)

    def predict():
        loop.predict(predict_step, params, make_inputs=make_inputs,
                     lengths=lengths, batch_size=16, max_ctx=64, mesh=mesh,
                     num_classes=2)
    predict()
    for got in (train_events, events):
        shapes = [e for e in got if e != "give back"]
        assert len(set(shapes)) > 1  # several buckets, so the test can tell
        assert got == _expected_give_backs(shapes)
    # Again on the shapes it compiled (an evaluation during training):
    # nothing compiles, nothing is given back.
    events.clear()
    predict()
    assert events and "give back" not in events


@pytest.mark.parametrize("frozen_backbone", [False, True])
def test_every_batch_shape_compiles_before_the_first_step(frozen_backbone):
    """The train loop compiles its step for all the pass's batch shapes
    first (a compile's memory then never lands on top of running steps):
    on 8 devices, with and without a frozen part (LoRA's third argument),
    the step is traced, lowered and compiled once per shape, all before
    the loop's first batch, and never again during the steps."""
    events = []
    module, params, lengths, make_inputs, mesh = _mixed_lengths(
        1, lambda inputs: events.append(("batch", inputs[0].shape[-1])),
        jax.devices())
    module_forward = steps.module_forward(module)

    def forward(params, inputs):  # runs when jit traces the step
        events.append(("trace", inputs[0].shape[-1]))
        return module_forward(params, inputs)

    def on_compile(event, duration, fun_name="", **_):
        # Lowering to MLIR, and compiling it (or loading it from the
        # persistent cache, which this event covers too).
        if event.startswith("/jax/core/compile/jaxpr_to_mlir_module"):
            events.append(("lower", fun_name))
        elif event.startswith("/jax/core/compile/backend_compile"):
            events.append(("compile", fun_name))
    settings = _settings(epochs=2)
    jax.monitoring.register_event_duration_secs_listener(on_compile)
    try:
        loop.finetune(
            name="t", forward=forward, params=params, make_inputs=make_inputs,
            lengths=lengths, train_targets=np.full((64, 2), 0.5, np.float32),
            settings=settings, loss=losses.get_loss("xent"), loss_params={},
            mesh=mesh, seed=0, trainable=(
                (lambda path: path[0] == "head") if frozen_backbone else None))
    finally:
        jax.monitoring.unregister_event_duration_listener(on_compile)
    n_steps = settings.epochs * (len(lengths) // settings.batch_size)
    batches = [i for i, (kind, _) in enumerate(events) if kind == "batch"]
    first_step = batches[-n_steps]
    ahead, during = events[:first_step], events[first_step:]
    shapes = {n for kind, n in during if kind == "batch"}
    assert len(shapes) > 1  # several buckets, so the test can tell
    assert {n for kind, n in ahead if kind == "trace"} == shapes
    assert not [e for e in during if e[0] == "trace"]
    # The step is lowered and compiled once per shape ahead, never after.
    for stage in ("lower", "compile"):
        names = [name for kind, name in ahead if kind == stage]
        step_name = max(set(names), key=names.count)
        assert names.count(step_name) == len(shapes)
        assert (stage, step_name) not in during


def test_minibatch_rows_by_length():
    """Shorter batches take the most rows within the longest rung's tokens
    (8 x 58 = 464): 32 x 7, 32 x 13 (416), 16 x 22, 8 x 34 (16 x 34 > 464)."""
    rungs = (7, 13, 22, 34, 58)
    settings = _settings(batch_size=32, minibatch_size=8)
    assert loop.minibatch_rows(settings, rungs) == {7: 32, 13: 32, 22: 16,
                                                    34: 8, 58: 8}
    assert loop.minibatch_rows(settings, (3, 21))[3] == 32  # 96 <= 168
    # Rows divide the batch and are a multiple of minibatch_size: of 8, 16,
    # 24 and 48 (batch 48), 24 x 10 fills 8 x 30 exactly.
    assert loop.minibatch_rows(_settings(batch_size=48, minibatch_size=8),
                               (10, 30))[10] == 24
    # 40 does not divide 64 (batch 64, budget 8 x 40): 32 rows at length 9.
    assert loop.minibatch_rows(_settings(batch_size=64, minibatch_size=8),
                               (9, 40))[9] == 32
    fixed = _settings(batch_size=32, minibatch_size=8, minibatch_by_tokens=False)
    assert set(loop.minibatch_rows(fixed, rungs).values()) == {8}


# (batch, lengths, devices, rows per minibatch by tokens): batches of 16,
# the short ones in one minibatch of 16 rows, on one device; batches of 32,
# the short one (17-30 tokens, padded to 32; 8 x 64 tokens fit) in two
# minibatches of 16 rows, on 8 devices (2 rows each; 1 at 8 rows).
BY_TOKENS_CASES = {
    "one device, batch 16": (16, None, 1, {8, 16}),
    "8 devices, batch 32": (32, np.concatenate([np.arange(17, 31).repeat(3)[:32],
                                                np.arange(33, 65)]),
                            8, {8, 16}),
}


@pytest.mark.parametrize("loss_name", ["xent", "logconf"])
@pytest.mark.parametrize("case", list(BY_TOKENS_CASES))
def test_minibatches_by_tokens_train_as_fixed_minibatches(loss_name, case):
    """Whatever the rows per minibatch, a step's loss is the whole batch's
    (the confidence loss's hardening included): training with minibatches
    by tokens ends where fixed minibatches of 8 end, while the step really
    ran minibatches of 16 rows for the short batches."""
    batch_size, sizes, n_devices, rows_by_tokens = BY_TOKENS_CASES[case]
    results = {}
    for by_tokens in (True, False):
        shapes = set()
        module, params, lengths, make_inputs, mesh = _mixed_lengths(
            2, lambda inputs: None, jax.devices()[:n_devices], sizes)
        module_forward = steps.module_forward(module)

        def forward(params, inputs):  # a minibatch's [rows, L], at trace
            shapes.add(inputs[0].shape)
            return module_forward(params, inputs)
        targets = np.random.default_rng(3).dirichlet([1, 1], 64).astype(np.float32)
        params, record = loop.finetune(
            name="t", forward=forward, params=params, make_inputs=make_inputs,
            lengths=lengths, train_targets=targets,
            settings=_settings(epochs=2, minibatch_by_tokens=by_tokens,
                               batch_size=batch_size, lr_schedule="constant",
                               lr=1e-4),
            loss=losses.get_loss(loss_name),
            loss_params=LOSS_PARAMS if loss_name == "logconf" else {},
            mesh=mesh, seed=0)
        results[by_tokens] = (params, record["loss_curve"], shapes)
    (p_tok, curve_tok, shapes_tok), (p_fix, curve_fix, shapes_fix) = (
        results[True], results[False])
    assert {rows for rows, _ in shapes_fix} == {8}
    assert {rows for rows, _ in shapes_tok} == rows_by_tokens
    np.testing.assert_allclose(curve_tok, curve_fix, rtol=1e-5, atol=1e-6)
    assert _max_diff(p_tok, p_fix) < 1e-5
    assert not np.allclose(curve_fix[0], curve_fix[-1]), "nothing trained"


def test_stage_key_leaves_out_the_default_minibatch_split():
    """A stage's key has the settings that change what is learned: not
    log_every, and minibatch_by_tokens only when off (its default, which
    changes rounding only, keeps the keys stages had before it existed)."""
    before = {"lr", "head_lr", "batch_size", "minibatch_size", "epochs",
              "lr_schedule", "warmup_steps", "weight_decay",
              "eval_batch_size", "max_ctx"}
    assert set(_settings().key_fields()) == before
    off = _settings(minibatch_by_tokens=False).key_fields()
    assert set(off) == before | {"minibatch_by_tokens"}
    assert off["minibatch_by_tokens"] is False
    # Packed stages train on other (random) batches: keyed apart.
    assert _settings(pack=True).key_fields()["pack"] is True


def test_stage_key_names_a_bfloat16_matmul_precision():
    """Stages run under config.matmul_precision="bfloat16" (run.run_one's
    context) are keyed apart; under the default, keys are as before."""
    spec = {"mode": "finetune", "name": "minilm-l3"}
    plain = stages.stage_key(spec)
    with run_lib.matmul_precision("default"):
        assert stages.stage_key(spec) == plain
    with run_lib.matmul_precision("bfloat16"):
        rounded = stages.stage_key(spec)
    assert rounded != plain
    assert rounded == stages.stage_key({**spec, "matmul_precision": "bfloat16"})
    assert stages.stage_key(spec) == plain  # the context is left behind
    # The config decides: "default" undoes a precision set around the run
    # (say by JAX_DEFAULT_MATMUL_PRECISION), and the stage record names it.
    with jax.default_matmul_precision("bfloat16"):
        with run_lib.matmul_precision("default"):
            assert stages.stage_key(spec) == plain
            assert stages.keyed_spec(spec) == spec
        assert stages.keyed_spec(spec) == {**spec, "matmul_precision": "bfloat16"}
