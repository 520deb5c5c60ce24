"""Scale-out: mesh axes, logical-axis rules, sharded init and training,
mixed precision and rematerialisation, on the 8 virtual CPU devices."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from w2s_jax.core import sharding
from w2s_jax.train import losses, steps
from w2s_jax.models import bert, gpt2, llama, mpnet, registry, tokenizers

MESHES = {"data8": {"data": 8}, "data2-fsdp4": {"data": 2, "fsdp": 4},
          "data2-fsdp2-tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}
N_STEPS = 3


def _settings():
    # A constant small lr: Adam turns 1e-9 gradient noise on near-zero
    # parameters into 1e-5 parameter differences; this keeps the comparison
    # about the sharded computation, not the optimizer.
    return steps.TrainSettings(
        lr=1e-4, head_lr=None, batch_size=16, minibatch_size=8, epochs=1,
        lr_schedule="constant", warmup_steps=0, weight_decay=0.0,
        eval_batch_size=16, max_ctx=32, log_every=100)


def _tiny_llama() -> registry.ResolvedModel:
    """A one-layer grouped-query Llama on byte tokens, from an HF-style config."""
    config = llama.LlamaConfig.from_hf({
        "model_type": "llama", "vocab_size": 256, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64})
    return registry.ResolvedModel(
        name="tiny-llama-random", family="llama", backbone_config=config,
        tokenizer=tokenizers.ByteTokenizer(), default_lr=1e-3,
        default_minibatch_size=None, checkpoint_dir=None,
        source={"kind": "random_init"})


MODELS = {"gpt2": lambda: registry.resolve("tiny-gpt2-random"),
          "llama": _tiny_llama}


def _batches(n_micro=2, micro=8, length=16):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(N_STEPS):
        ids = rng.integers(0, 256, (n_micro, micro, length), dtype=np.int32)
        lens = rng.integers(3, length + 1, (n_micro, micro))
        mask = (np.arange(length) < lens[..., None]).astype(np.int32)
        p1 = rng.uniform(size=(n_micro, micro, 1)).astype(np.float32)
        out.append({"inputs": (ids, mask),
                    "targets": np.concatenate([1 - p1, p1], axis=-1)})
    return out


def _train(model, mesh, **build):
    """Losses and the final state after N_STEPS sharded steps."""
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal", **build)
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh)
    tx = steps.make_optimizer(_settings())
    state = steps.init_state(tx, params, mesh, total_steps=N_STEPS)
    traces = []

    def forward(p, inputs):
        traces.append(1)
        return steps.module_forward(module)(p, inputs)

    step = steps.make_train_step(
        forward, tx, losses.get_loss("xent"), {}, mesh,
        param_shardings=sharding.shardings_of(params))
    values, traced = [], []
    for batch in _batches():
        state, metrics = step(state, sharding.to_global(mesh, batch, 1))
        values.append(float(metrics["loss"]))
        traced.append(len(traces))
    assert traced[0] == traced[-1], "the step was traced again"
    return np.array(values), state


_ONE_DEVICE = {}


def _one_device(name):
    if name not in _ONE_DEVICE:
        mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
        values, state = _train(MODELS[name](), mesh)
        _ONE_DEVICE[name] = values, jax.tree.map(np.asarray, state["params"])
    return _ONE_DEVICE[name]


def _xent(logits, targets):
    return losses.loss_value(losses.get_loss("xent"), logits=logits,
                             targets=targets, progress=0.0, params={})


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# GPT-2 on data=8 alone is test_train.py's test_one_and_eight_devices_agree.
@pytest.mark.parametrize("model_name, mesh_name", [
    ("gpt2", "data2-fsdp4"), ("gpt2", "data2-fsdp2-tensor2"), ("llama", "data8"),
    ("llama", "data2-fsdp4"), ("llama", "data2-fsdp2-tensor2")])
def test_sharded_training_matches_one_device(model_name, mesh_name):
    mesh = sharding.make_mesh(MESHES[mesh_name])
    values, state = _train(MODELS[model_name](), mesh)
    values_1, params_1 = _one_device(model_name)
    np.testing.assert_allclose(values, values_1, atol=1e-5)
    assert _max_diff(state["params"], params_1) < 1e-5
    assert not np.allclose(values_1[0], values_1[-1]), "training changed nothing"

    # The layout really is the rules' one, for weights and Adam's moments.
    blocks = state["params"]["backbone"]
    up = (blocks["h_0"]["mlp"]["c_fc"]["kernel"] if model_name == "gpt2"
          else blocks["layers_0"]["mlp"]["up_proj"]["kernel"])  # [embed, mlp]
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    assert up.sharding.spec == P("fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (64 // fsdp,
                                                   up.shape[1] // tensor)
    mu = state["opt_state"][0].mu["backbone"]
    mu_up = (mu["h_0"]["mlp"]["c_fc"]["kernel"] if model_name == "gpt2"
             else mu["layers_0"]["mlp"]["up_proj"]["kernel"])
    assert mu_up.sharding.is_equivalent_to(up.sharding, up.ndim)
    assert state["opt_state"][0].count.sharding.spec == P()


def test_undivisible_dimension_is_replicated(capsys):
    """GPT-2's vocabulary rows on tensor=2: 257 rows stay whole, logged."""
    config = gpt2.GPT2Config(vocab_size=257, n_positions=32, n_embd=64,
                             n_layer=1, n_head=4)
    ids = jnp.zeros((1, 4), jnp.int32)
    mesh = sharding.make_mesh(MESHES["data2-fsdp2-tensor2"])
    abstract, shardings = sharding.param_shardings(
        lambda key: gpt2.GPT2Backbone(config).init(key, ids, ids)["params"],
        jax.random.key(0), mesh=mesh)
    assert shardings["wte"]["embedding"].spec == P(None, "fsdp")
    assert shardings["h_0"]["mlp"]["c_fc"]["kernel"].spec == P("fsdp", "tensor")
    assert abstract["wte"]["embedding"].shape == (257, 64)
    assert "wte/embedding dim 0 (vocab=257" in capsys.readouterr().out


def test_activation_constraint_keeps_undivisible_dimensions_whole():
    """sharding.constrain falls back as param_shardings does: 257 rows on
    tensor=2 stay whole rather than being split unevenly."""
    mesh = sharding.make_mesh(MESHES["data2-fsdp2-tensor2"])

    def pinned(x):
        with sharding.activation_rules(mesh):
            return sharding.constrain(x, ("vocab", "act_embed"))

    def constraint(rows):  # the constraint as lowered (Shardy's dialect)
        text = jax.jit(pinned).lower(jnp.ones((rows, 64))).as_text()
        (line,) = [l for l in text.splitlines() if "sharding_constraint" in l]
        return line.split("<@mesh, ")[1].split(">")[0]

    assert constraint(257) == "[{}, {}]"
    assert constraint(256) == '[{"tensor"}, {}]'


# Small HF-style configs of the families the tests above do not train.
_ENCODER = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 64,
            "max_position_embeddings": 40}
FAMILY_CONFIGS = {
    "bert": lambda: bert.BertConfig.from_hf({"model_type": "bert", **_ENCODER}),
    "mpnet": lambda: mpnet.MPNetConfig.from_hf({"model_type": "mpnet", **_ENCODER}),
    "qwen2": lambda: llama.LlamaConfig.from_hf({
        "model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 40}),
}


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_every_family_tags_its_parameters_and_activations(family):
    """param_shardings refuses a parameter without logical axes, and tracing
    the sharded predict step checks every activation's names (no compile)."""
    config = FAMILY_CONFIGS[family]()
    model = registry.ResolvedModel(
        name=family, family=registry.MODEL_TYPES[family], backbone_config=config,
        tokenizer=tokenizers.ByteTokenizer(), default_lr=1e-3,
        default_minibatch_size=None, checkpoint_dir=None, source={})
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal", pooling="mean")
    mesh = sharding.make_mesh(MESHES["data2-fsdp2-tensor2"])
    ids = jnp.zeros((8, 16), jnp.int32)
    abstract, shardings = sharding.param_shardings(
        lambda key: module.init(key, ids, ids)["params"], jax.random.key(0),
        mesh=mesh)
    if family == "qwen2":
        block = shardings["backbone"]["layers_0"]
        kernel = block["mlp"]["up_proj"]["kernel"]
        bias = block["self_attn"]["q_proj"]["bias"]
    else:
        block = shardings["backbone"]["layer_0"]
        kernel, bias = (block["intermediate"][k] for k in ("kernel", "bias"))
    assert kernel.spec == P("fsdp", "tensor") and bias.spec == P("tensor")

    forward = steps.module_forward(module)
    predict = steps.make_predict_step(forward, mesh, shardings)
    assert jax.eval_shape(predict, abstract, (ids, ids)).shape == (8, 2)
    no_heads = tuple(rule for rule in sharding.RULES if rule[0] != "act_heads")
    predict = steps.make_predict_step(forward, mesh, shardings, rules=no_heads)
    with pytest.raises(ValueError, match=r"\['act_heads'\] .* no rule"):
        jax.eval_shape(predict, abstract, (ids, ids))


def _gpt2_shardings(rules):
    model = registry.resolve("tiny-gpt2-random")
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="zeros")
    ids = jnp.zeros((1, 4), jnp.int32)
    return sharding.param_shardings(
        lambda key: module.init(key, ids, ids)["params"], jax.random.key(0),
        mesh=sharding.make_mesh(MESHES["data2-fsdp2-tensor2"]), rules=rules)


def test_rules_refuse_collisions_and_unmatched_names():
    colliding = tuple((name, "fsdp" if name == "mlp" else axes)
                      for name, axes in sharding.RULES)
    with pytest.raises(ValueError, match=r"backbone/h_0/mlp/c_fc/kernel: "
                       r"logical axes 'embed' and 'mlp' .* mesh axis 'fsdp'"):
        _gpt2_shardings(colliding)
    missing = tuple(rule for rule in sharding.RULES if rule[0] != "qkv")
    with pytest.raises(ValueError, match=r"backbone/h_0/attn/c_attn/bias: "
                       r"logical axes \['qkv'\] .* no rule"):
        _gpt2_shardings(missing)
    mesh = sharding.make_mesh(MESHES["data8"])
    with pytest.raises(ValueError, match=r"'act_mlp'\] .* no rule"):
        with sharding.activation_rules(mesh, missing[:2]):
            sharding.constrain(jnp.zeros((8, 2, 4)),
                               ("batch", "length", "act_mlp"))
    with pytest.raises(ValueError, match=r"mesh axes \['model'\]"):
        sharding.check_rules((("embed", "model"),), mesh)


def test_mesh_from_config_axes():
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sharding.batch_size_divisor(mesh) == 8
    assert sharding.batch_sharding(mesh, 1).spec == P(None, ("data", "fsdp"))
    for axes, message in [({"data": -1, "model": 2}, r"unknown axes \['model'\]"),
                          ({"data": -1, "fsdp": -1}, "at most one -1"),
                          ({"data": 0}, "positive integers"),
                          ({"data": 3}, "needs 3 devices"),
                          ({"data": -1, "tensor": 3}, "not divisible by 3")]:
        with pytest.raises(ValueError, match=message):
            sharding.make_mesh(axes)


def test_bfloat16_compute_keeps_float32_state_and_logits():
    model = registry.resolve("tiny-gpt2-random")
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    modules = {dtype: steps.build_classifier(
        model, num_classes=2, linear_probe=False, head_init="normal",
        compute_dtype=dtype) for dtype in ("float32", "bfloat16")}
    params = steps.init_params(modules["bfloat16"], model, head_init="normal",
                               seed=0, mesh=mesh)
    tx = steps.make_optimizer(_settings())
    forward = steps.module_forward(modules["bfloat16"])
    step = steps.make_train_step(forward, tx, losses.get_loss("xent"), {},
                                 mesh)
    batch = _batches()[0]
    # Shapes and dtypes of a whole step, traced but not compiled.
    state, metrics = jax.eval_shape(step, steps.init_state(tx, params, mesh,
                                                         total_steps=N_STEPS),
                                    sharding.to_global(mesh, batch, 1))
    dtypes = {x.dtype for x in jax.tree.leaves((state, metrics))
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}

    inputs, targets = tuple(x[0] for x in batch["inputs"]), batch["targets"][0]
    hidden = jax.eval_shape(modules["bfloat16"].backbone.apply,
                            {"params": params["backbone"]}, *inputs)
    assert hidden.dtype == jnp.bfloat16
    logits = {dtype: jax.jit(steps.module_forward(module))(params, inputs)
              for dtype, module in modules.items()}
    assert logits["bfloat16"].dtype == jnp.float32
    assert not np.array_equal(logits["bfloat16"], logits["float32"]), "bf16 unused"
    values = {dtype: float(_xent(x, targets)) for dtype, x in logits.items()}
    assert abs(values["bfloat16"] - values["float32"]) < 1e-2


def test_remat_gives_the_same_loss_and_gradients():
    model = _tiny_llama()
    batch = _batches()[0]
    inputs, targets = tuple(x[0] for x in batch["inputs"]), batch["targets"][0]
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    modules = {policy: steps.build_classifier(
        model, num_classes=2, linear_probe=False, head_init="normal",
        remat=policy) for policy in sharding.REMAT_POLICIES}
    # Remat changes no parameter: one init serves every policy.
    params = steps.init_params(modules["none"], model, head_init="normal",
                               seed=0, mesh=mesh)
    results = {}
    for policy, module in modules.items():
        forward = steps.module_forward(module)
        grad_fn = jax.value_and_grad(lambda p: _xent(forward(p, inputs), targets))
        jaxpr = str(jax.make_jaxpr(grad_fn)(params))
        assert ("remat" in jaxpr) == (policy != "none"), policy
        results[policy] = jax.jit(grad_fn)(params)
    value, grads = results.pop("none")
    for policy, (value_r, grads_r) in results.items():
        np.testing.assert_allclose(value_r, value, rtol=1e-6, err_msg=policy)
        assert _max_diff(grads_r, grads) < 1e-6, policy


def _compile_fsdp_step(family, choice=False):
    """Compiles the train step of a tiny `family` model on data=2, fsdp=2,
    tensor=2; `choice`: a ChoiceScorer over 2 candidates scored by the tied
    LM head. Run by _compile_in_fresh_process, where no persistent cache
    can serve it instead (a cache hit logs nothing)."""
    if family == "gpt2":
        model = registry.resolve("tiny-gpt2-random")
    elif family == "gpt2-vocab257":  # rows tensor=2 cannot split: kept whole
        model = registry.ResolvedModel(
            name=family, family="gpt2", backbone_config=gpt2.GPT2Config(
                vocab_size=257, n_positions=32, n_embd=64, n_layer=1,
                n_head=4),
            tokenizer=tokenizers.ByteTokenizer(), default_lr=1e-3,
            default_minibatch_size=None, checkpoint_dir=None, source={})
    else:
        model = registry.ResolvedModel(
            name=family, family=registry.MODEL_TYPES[family],
            backbone_config=FAMILY_CONFIGS[family](),
            tokenizer=tokenizers.ByteTokenizer(), default_lr=1e-3,
            default_minibatch_size=None, checkpoint_dir=None, source={})
    if choice:
        module = steps.build_choice_scorer(
            model, candidates=2, linear_probe=False, head_init="normal",
            pooling="last")
        assert module.embedding_path  # scored by the LM head
    else:
        module = steps.build_classifier(model, num_classes=2,
                                        linear_probe=False, head_init="normal",
                                        pooling="mean")
    mesh = sharding.make_mesh(MESHES["data2-fsdp2-tensor2"])
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh)
    tx = steps.make_optimizer(_settings())
    step = steps.make_train_step(
        steps.module_forward(module), tx, losses.get_loss("xent"), {},
        mesh, param_shardings=sharding.shardings_of(params))
    batch = dict(_batches()[0])
    ids, mask = (np.minimum(x, 63) for x in batch["inputs"])
    if choice:  # [micro, rows, K, L]: two candidates per example
        ids, mask = (np.stack([x, x], axis=2) for x in (ids, mask))
    batch["inputs"] = (ids, mask)
    step.lower(steps.init_state(tx, params, mesh, total_steps=N_STEPS),
               sharding.to_global(mesh, batch, 1)).compile()


INVOLUNTARY = "Involuntary full rematerialization"
# A case: (family, choice, plain); `plain`: the lookup as nn.Embed does it.
CONTROL = ("gpt2", False, True)
_CASE_MARK = "@@ compile case "
# `python -c _CHILD TESTS_DIR CASES_JSON`: compiles each case in a fresh
# process, a marked line on stderr before each one.
_CHILD = f"""
import json, sys
sys.path.insert(0, sys.argv[1])
import conftest  # 8 CPU devices, set before jax starts
import flax.linen as nn
import test_sharding
from w2s_jax.models import layers
gathered = layers.GatheredEmbed.__call__
for family, choice, plain in json.loads(sys.argv[2]):
    layers.GatheredEmbed.__call__ = nn.Embed.__call__ if plain else gathered
    print({_CASE_MARK!r} + json.dumps([family, choice, plain]),
          file=sys.stderr, flush=True)
    test_sharding._compile_fsdp_step(family, choice)
print({_CASE_MARK!r} + "end", file=sys.stderr, flush=True)
"""
_COMPILE_ERR: dict = {}  # case -> what compiling it wrote to stderr
_COMPILE_FAILED: list = []  # why the fresh process failed, once it has


def _compile_in_fresh_process(cases):
    # Not in this process: once any test here has run `run.run` (which
    # points JAX at w2s's persistent compilation cache), turning
    # jax_enable_compilation_cache off no longer stops the cache (JAX
    # decides whether it is used at a process's first compile, and keeps
    # it), so a program compiled by an earlier pytest run is loaded, not
    # compiled, and XLA warns of nothing. There, it is off from the start;
    # XLA's warnings are shown. LLVM's optimisations, which come after the
    # partitioner, are skipped (a third of the compile time).
    flags = ("--xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false",
               TF_CPP_MIN_LOG_LEVEL="1",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_LOGGING_LEVEL"):
        env.pop(name, None)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, tests_dir, json.dumps(cases)],
        cwd=os.path.dirname(tests_dir), env=env, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    parts = [p.partition("\n") for p in proc.stderr.split(_CASE_MARK)[1:]]
    assert parts and parts[-1][0] == "end", proc.stderr[-5000:]
    return {tuple(json.loads(head)): text for head, _, text in parts[:-1]}


def _case(item):
    function = getattr(item, "function", None)
    if function is test_plain_embedding_lookup_does_rematerialize:
        return CONTROL
    if function is test_fsdp_step_needs_no_involuntary_rematerialization:
        params = item.callspec.params
        return params["family"], params["choice"], False
    return None


def _compile_stderr(request, case):
    """What compiling `case`, and the control after it, wrote to stderr in a
    fresh Python process. The first call compiles every case the session
    selected, in one process, and the control last of them."""
    if _COMPILE_FAILED:  # fail at once rather than compile everything again
        pytest.fail("the fresh compile process failed earlier:\n"
                    + _COMPILE_FAILED[0])
    if case not in _COMPILE_ERR:
        todo = [c for c in dict.fromkeys(map(_case, request.session.items))
                if c and c != CONTROL and c not in _COMPILE_ERR]
        if case != CONTROL and case not in todo:
            todo.append(case)
        try:
            _COMPILE_ERR.update(_compile_in_fresh_process(todo + [CONTROL]))
        except (AssertionError, subprocess.TimeoutExpired) as failure:
            _COMPILE_FAILED.append(str(failure)[-5000:])
            raise
    return _COMPILE_ERR[case], _COMPILE_ERR[CONTROL]


def _warnings(err):
    return "\n".join(line[:400] for line in err.splitlines()
                     if INVOLUNTARY in line)


@pytest.mark.parametrize("family, choice", [
    ("gpt2", False), ("gpt2-vocab257", False), ("gpt2", True),
    # The other families' compiles are in the full run (README: -m slow).
    *(pytest.param(f, False, marks=pytest.mark.slow) for f in FAMILY_CONFIGS)])
def test_fsdp_step_needs_no_involuntary_rematerialization(family, choice,
                                                          request):
    """Embedding tables are gathered over fsdp before the lookup
    (layers.GatheredEmbed), so XLA's partitioner never has to move
    looked-up rows, or their cotangents, between a feature split and a
    batch split by replicating them; a tied LM head's `hidden @ table.T`
    (the choice case) partitions without it."""
    err, control_err = _compile_stderr(request, (family, choice, False))
    assert INVOLUNTARY in control_err, (
        "the control, compiled after this case in the same process, did not "
        "warn (XLA's log did not reach stderr, or no compile ran), so this "
        "check could not fail either:\n" + control_err[-3000:])
    assert INVOLUNTARY not in err, _warnings(err)


def test_plain_embedding_lookup_does_rematerialize(request):
    """The control: the lookup from the fsdp-split table, as nn.Embed does
    it, makes XLA warn (so the test above can see the warning)."""
    err, _ = _compile_stderr(request, CONTROL)
    assert INVOLUNTARY in err, err[-3000:]
