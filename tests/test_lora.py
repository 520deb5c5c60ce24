"""LoRA: adapters match Hugging Face peft's on the same weights (values and
gradients), only the adapters and the head train, checkpoints hold only
them, and a LoRA stage resumes from its checkpoint."""
import os

import flax

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import test_gpt2_parity as gpt2_parity
import test_llama_parity as llama_parity
from test_recipes import _config, _stage, mirror  # noqa: F401
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core import sharding
from w2s_jax.core.errors import UsageError
from w2s_jax.models import gpt2, llama, lora
from w2s_jax.train import loop, losses, steps

peft = pytest.importorskip("peft")

RANK, ALPHA = 4, 8.0


def _gpt2(directory):
    torch_model = gpt2_parity._save(transformers.GPT2Model, directory, seed=0)
    backbone, params = gpt2_parity._load(directory)
    return torch_model, backbone, params, gpt2.HF_WEIGHT_MAP, gpt2_parity._right_pad(
        [[5, 0, 9, 12, 33], [1, 2, 3]])


def _llama(directory):
    torch_model = llama_parity._build("llama_gqa_tied")
    torch_model.save_pretrained(directory)
    backbone, params = llama_parity._load(directory)
    table = llama.hf_weight_map(backbone.config)
    return torch_model, backbone, params, table, llama_parity._batch()


def _adapted(table, targets, num_layers=2):
    """(flax module path, HF module name) of every projection in the weight
    map whose layer name is a target (both parity models have 2 layers)."""
    out = set()
    for flax_path, hf_name, *_ in table:
        if flax_path.endswith("/kernel") and flax_path.split("/")[-2] in targets:
            for i in range(num_layers):
                out.add((flax_path[:-len("/kernel")].format(i=i),
                         hf_name[:-len(".weight")].format(i=i)))
    return sorted(out)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapters_match_peft_values_and_gradients(family, tmp_path):
    torch_model, backbone, base, table, (ids, mask) = (
        _gpt2 if family == "gpt2" else _llama)(tmp_path)
    targets = lora.DEFAULT_TARGETS[family]
    peft_model = peft.get_peft_model(torch_model, peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(targets),
        fan_in_fan_out=family == "gpt2"))
    # peft starts B at zero, where a wrong A would not show: randomise both.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn_like(p))
    torch_params = dict(peft_model.named_parameters())
    # Ours: the same base, the same adapters (A [in, r] = peft's A.T, B
    # [r, out] = peft's B.T), on every projection peft adapted.
    params = flax.traverse_util.flatten_dict(base, sep="/")
    adapted = 0
    for flax_module, hf_module in _adapted(table, targets):
        a = torch_params[f"base_model.model.{hf_module}.lora_A.default.weight"]
        b = torch_params[f"base_model.model.{hf_module}.lora_B.default.weight"]
        params[f"{flax_module}/lora_a"] = a.detach().numpy().T
        params[f"{flax_module}/lora_b"] = b.detach().numpy().T
        adapted += 1
    assert adapted == sum("lora_A" in n for n in torch_params)
    params = flax.traverse_util.unflatten_dict(params, sep="/")
    spec = lora.LoraSpec(RANK, ALPHA, targets)

    weights = np.random.default_rng(2).normal(size=(*ids.shape, 48)).astype(np.float32)
    weights *= mask[..., None]  # padded positions carry no loss

    def loss(p):
        with lora.scope(spec):
            hidden = backbone.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask))
        return jnp.sum(hidden * weights), hidden

    (value, hidden), grads = jax.value_and_grad(loss, has_aux=True)(params)
    out = peft_model(input_ids=torch.tensor(ids, dtype=torch.long),
                     attention_mask=torch.tensor(mask, dtype=torch.long))
    torch_hidden = out.last_hidden_state
    (torch_hidden * torch.tensor(weights)).sum().backward()
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real],
                               torch_hidden.detach().numpy()[real], atol=1e-4)
    grads = flax.traverse_util.flatten_dict(grads, sep="/")
    for flax_module, hf_module in _adapted(table, targets):
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            torch_grad = torch_params[
                f"base_model.model.{hf_module}.{theirs}.default.weight"].grad
            expected = torch_grad.numpy().T
            # float32 sums in another order: relative to the largest entry.
            np.testing.assert_allclose(grads[f"{flax_module}/{ours}"], expected,
                                       rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def _lora_config(mirror_dir, **lora_fields):
    config = _config(mirror_dir, config_lib.model_config("tiny-gpt2-random"),
                     config_lib.model_config("small-gpt2-random", lora=dict(
                         rank=RANK, alpha=ALPHA, targets="", base_dtype="float32",
                         **lora_fields)))
    config.n_train, config.n_test, config.train.epochs = 128, 64, 1
    config.train.batch_size = config.train.minibatch_size = 16
    return config


def test_only_adapters_and_head_train(mirror, tmp_path):
    """A LoRA ceiling: every base weight ends bit-equal to the pretrained
    (here: random-init) one, every adapter B and the head move, and the
    optimizer state covers the trainable leaves only."""
    from w2s_jax.experiment import setup
    config = _lora_config(mirror)
    ctx = setup.build(config, str(tmp_path))
    learner = ctx.learner(1)
    assert learner.lora == lora.LoraSpec(RANK, ALPHA, lora.DEFAULT_TARGETS["gpt2"])
    forward, params = learner.init(2, 0, ctx.mesh)
    before = jax.tree.map(np.asarray, params)
    half_a, _ = ctx.halves()
    targets = np.eye(2, dtype=np.float32)[ctx.train_labels[half_a]]
    after, record = loop.finetune(
        name="ceiling", forward=forward, params=params,
        make_inputs=learner.inputs("train", half_a),
        lengths=learner.lengths("train", half_a), train_targets=targets,
        settings=learner.settings, loss=losses.get_loss("xent"), loss_params={},
        mesh=ctx.mesh, seed=0, trainable=learner.trainable)
    flat_before = flax.traverse_util.flatten_dict(before)
    flat_after = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, after))
    assert flat_before.keys() == flat_after.keys()
    n_adapters = 0
    for path, old in flat_before.items():
        moved = not np.array_equal(old, flat_after[path])
        if path[-1] == "lora_b" or path[0] == "head":
            assert moved, path
        elif path[-1] == "lora_a":
            n_adapters += 1
        else:
            assert not moved, path
    # c_attn, c_proj (attention and MLP) and c_fc in each of 4 blocks.
    assert n_adapters == 4 * 4
    tx = steps.make_optimizer(learner.settings)
    state = steps.init_state(tx, params, ctx.mesh, learner.trainable,
                             total_steps=record["steps"])
    trainable_size = sum(x.size for x in jax.tree.leaves(state["params"]))
    moments = sum(x.size for x in jax.tree.leaves(state["opt_state"])
                  if x.ndim > 0)
    assert moments == 2 * trainable_size  # Adam's two moments, nothing else
    assert trainable_size < 0.2 * sum(x.size for x in jax.tree.leaves(params))


def test_bf16_base_and_the_stage_resumes_from_adapter_only_checkpoints(
        mirror, tmp_path):
    """A w2s run with a LoRA student whose base is bfloat16, stopped after
    its checkpoints and rerun: the same results as an uninterrupted run,
    from checkpoints far smaller than the model."""
    config = _lora_config(mirror)
    config.strong.lora.base_dtype = "bfloat16"
    config.checkpoint_every_steps = 2
    straight = run.run(config, str(tmp_path / "straight"))

    from w2s_jax.experiment import setup
    ctx = setup.build(config, str(tmp_path / "probe"))
    learner = ctx.learner(1)
    _, params = learner.init(2, 0, ctx.mesh)
    for path, leaf in flax.traverse_util.flatten_dict(params).items():
        assert leaf.dtype == (jnp.float32 if lora.is_trainable(path)
                              else jnp.bfloat16), path

    # A run cut short: the LoRA ceiling (4 steps) stops after step 2, as
    # on SIGTERM, and saves its checkpoint.
    workdir = str(tmp_path / "resumed")
    real_train = loop._train

    def stop_after_checkpoint(name, *args, **kwargs):
        if name == "ceiling":
            kwargs["stop"] = lambda step: step == 2
        return real_train(name, *args, **kwargs)

    import w2s_jax.core.checkpoint as checkpoint
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "_train", stop_after_checkpoint)
        with pytest.raises(checkpoint.Preempted):
            run.run(config, workdir)
    inprogress = [d for d in os.listdir(os.path.join(workdir, "stages"))
                  if d.startswith(".inprogress-ceiling")]
    assert inprogress, os.listdir(os.path.join(workdir, "stages"))
    ckpt_bytes = sum(os.path.getsize(os.path.join(root, f))
                     for root, _, files in os.walk(os.path.join(
                         workdir, "stages", inprogress[0])) for f in files)
    # A full finetune's checkpoint holds float32 params and Adam's two
    # moments: 12 bytes a parameter. Adapters and head are ~4% of the
    # parameters (with orbax's metadata, ~1.1 MB here); the bfloat16 base
    # alone would add 2 bytes a parameter, past the bound.
    n_params = sum(x.size for x in jax.tree.leaves(params))
    assert ckpt_bytes < 0.2 * 12 * n_params, (ckpt_bytes, n_params)
    assert ckpt_bytes + 2 * n_params > 0.2 * 12 * n_params
    resumed = run.run(config, workdir)
    assert resumed["gold_test"] == straight["gold_test"]
    record, _ = _stage(workdir, resumed, "ceiling")
    assert record["resumed_from_step"] == 2


def test_lora_config_errors():
    config = config_lib.base_config()
    config.strong.lora.rank = 4
    config.strong.linear_probe = True
    with pytest.raises(UsageError, match="linear_probe=True freezes"):
        config_lib.validate(config)
    config.strong.linear_probe = False
    config.strong.lora.base_dtype = "fp8"
    with pytest.raises(UsageError, match="base_dtype='fp8'.*bfloat16"):
        config_lib.validate(config)
    config.strong.lora.base_dtype = "bfloat16"
    config.strong.mode = "features"
    with pytest.raises(UsageError, match="use mode 'finetune'"):
        config_lib.validate(config)


def test_unknown_targets_name_the_familys_projections():
    from w2s_jax.models import registry
    model = registry.resolve("tiny-gpt2-random")
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="zeros")
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    with pytest.raises(UsageError, match="q_proj match no layer.*c_attn, c_proj, c_fc"):
        steps.init_params(module, model, head_init="zeros", seed=0, mesh=mesh,
                          lora_spec=lora.LoraSpec(RANK, ALPHA, ("q_proj",)))


# Qwen2.5-7B's config.json (the hub's), for its shapes only.
QWEN_7B = {
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 131072, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu"}


def test_the_7b_lora_config_fits_one_80gb_accelerator():
    """configs/lora_qwen7b.py's strong stage by the estimate the stage
    prints (train/memory.py), on the real 7B shapes (abstract: nothing is
    allocated); full finetuning of the same model would not fit."""
    import importlib.util

    from w2s_jax.models import registry
    from w2s_jax.train import memory
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "lora_qwen7b.py")
    spec_file = importlib.util.spec_from_file_location("lora_qwen7b", path)
    module = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(module)
    config = module.get_config()
    config_lib.validate(config)
    model = registry.ResolvedModel(
        "qwen2.5-7b", "llama", llama.LlamaConfig.from_hf(QWEN_7B), None, 1e-5,
        None, None, {})
    spec = lora.spec_from_config(config.strong.lora, "llama")
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="zeros",
                                    compute_dtype=config.compute_dtype)
    dummy = jnp.zeros((1, 8), jnp.int32)
    with lora.scope(spec):
        abstract = jax.eval_shape(
            lambda k: module.init(k, dummy, dummy)["params"], jax.random.key(0))
    flat = flax.traverse_util.flatten_dict(abstract)
    base_bf16 = flax.traverse_util.unflatten_dict({
        k: v if lora.is_trainable(k) else jax.ShapeDtypeStruct(v.shape, jnp.bfloat16)
        for k, v in flat.items()})
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    settings = steps.TrainSettings(
        lr=1e-4, head_lr=None, batch_size=config.train.batch_size,
        minibatch_size=config.train.minibatch_size, epochs=2,
        lr_schedule="cosine", warmup_steps=0, weight_decay=0.0,
        eval_batch_size=32, max_ctx=config.max_ctx, log_every=10)
    kwargs = dict(settings=settings, seq_len=config.max_ctx, model=model,
                  compute_dtype="bfloat16", mesh=mesh)
    est = memory.estimate(base_bf16, lora.is_trainable, **kwargs)
    n_params = sum(x.size for x in jax.tree.leaves(abstract))
    n_adapters = sum(v.size for k, v in flat.items() if lora.is_adapter(k))
    assert 7.0e9 < n_params < 7.7e9 and 3e7 < n_adapters < 5e7
    # bfloat16 base, float32 adapters and head.
    assert est.params == pytest.approx(2 * n_params + 2 * n_adapters, rel=0.01)
    assert est.total < 80e9, memory.format(est)
    full = memory.estimate(abstract, None, **kwargs)
    assert full.total > 80e9, memory.format(full)
    print(memory.format(est), "| full finetuning:", memory.format(full))
