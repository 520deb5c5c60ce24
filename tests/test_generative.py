"""Generative finetuning: the next-token loss matches Hugging Face's LM
heads, the stage lowers held-out NLL, and its weights are the ones the
ceiling and weak-to-strong stages load."""
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from test_gpt2_parity import _hf_config as gpt2_hf_config
from test_gpt2_parity import _load as load_gpt2
from test_llama_parity import VOCAB as LLAMA_VOCAB
from test_llama_parity import _build as build_llama
from test_llama_parity import _load as load_llama
from test_recipes import _config, _stage, mirror  # noqa: F401
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core.errors import UsageError
from w2s_jax.data import tasks
from w2s_jax.experiment import generative as generative_stage
from w2s_jax.experiment import setup
from w2s_jax.models import classifier, registry, tokenizers
from w2s_jax.train import generative


def test_token_nll_by_hand():
    logits = np.log(np.array([[[0.2, 0.3, 0.5], [0.6, 0.3, 0.1],
                               [0.1, 0.1, 0.8]]], np.float32))
    ids = np.array([[0, 2, 1]], np.int32)
    # Full mask: positions 0 and 1 predict tokens 2 and 1.
    total, count = classifier.token_nll(jnp.asarray(logits), ids, np.ones_like(ids))
    np.testing.assert_allclose(total, [-np.log(0.5) - np.log(0.3)], rtol=1e-6)
    assert float(count[0]) == 2
    # The last token is padding: only position 0 predicts a real token.
    total, count = classifier.token_nll(jnp.asarray(logits), ids,
                                        np.array([[1, 1, 0]]))
    np.testing.assert_allclose(total, [-np.log(0.5)], rtol=1e-6)
    assert float(count[0]) == 1


def _resolved(family, config):
    return registry.ResolvedModel(
        name=f"tiny-{family}", family=family, backbone_config=config,
        tokenizer=tokenizers.ByteTokenizer(), default_lr=1e-3,
        default_minibatch_size=None, checkpoint_dir=None, source={})


def _hf_loss(lm_model, rows):
    """Hugging Face's mean next-token loss over every real token of `rows`."""
    total = count = 0.0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])
            loss = lm_model(input_ids=ids, labels=ids).loss
            total += float(loss) * (len(row) - 1)
            count += len(row) - 1
    return total / count


ROWS = [[5, 17, 3, 99, 42, 7], [8, 1, 250, 13], [60, 61, 62, 63, 64, 65, 66, 67]]


def test_heldout_nll_matches_hf_gpt2_lm_head(tmp_path):
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(gpt2_hf_config()).eval()
    lm.save_pretrained(tmp_path)
    backbone, params = load_gpt2(tmp_path)
    with open(tmp_path / "config.json") as f:
        model = _resolved("gpt2", registry.FAMILIES["gpt2"].config_from_hf(json.load(f)))
    ours = generative.heldout_nll(
        model, backbone, params, [np.array(r, np.int32) for r in ROWS],
        batch_size=8, max_ctx=16, mesh=_mesh())
    np.testing.assert_allclose(ours, _hf_loss(lm, ROWS), rtol=2e-5)


def test_heldout_nll_matches_hf_tied_llama_lm_head(tmp_path):
    lm = build_llama("llama_gqa_tied", model_cls=transformers.LlamaForCausalLM)
    lm.save_pretrained(tmp_path)
    backbone, params = load_llama(tmp_path)
    model = _resolved("llama", backbone.config)
    rows = [[r % LLAMA_VOCAB for r in row] for row in ROWS]
    ours = generative.heldout_nll(
        model, backbone, params, [np.array(r, np.int32) for r in rows],
        batch_size=8, max_ctx=16, mesh=_mesh())
    np.testing.assert_allclose(ours, _hf_loss(lm, rows), rtol=2e-5)


def test_untied_and_encoder_models_are_refused():
    untied = dataclasses.replace(
        registry.resolve("tiny-gpt2-random"), family="llama",
        backbone_config=dataclasses.make_dataclass(
            "C", [("tie_word_embeddings", bool, False)])())
    with pytest.raises(UsageError, match="untied head"):
        registry.check_tied_decoder(untied, "generative finetuning")
    config = config_lib.base_config()
    config.weak = config_lib.model_config("minilm-l3")
    config.strong = config_lib.model_config("minilm-l6")
    config.generative.epochs = 1
    with pytest.raises(UsageError, match="minilm-l6.*bert model"):
        config_lib.validate(config)


def test_hh_completions_hold_both_replies_without_the_preference():
    text = ("Human: hi there\n\nAssistant: hello\n\nHuman: a joke?\n\n"
            "Response A: no\n\nResponse B: sure, one\n\n"
            "Is Response A better than Response B?")
    assert tasks.hh_completions(text) == [
        "Human: hi there\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: no",
        "Human: hi there\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: sure, one"]


def test_generative_stage_lowers_heldout_nll_and_feeds_the_strong_stages(
        mirror, tmp_path):  # noqa: F811
    config = _config(mirror, config_lib.model_config("tiny-gpt2-random"),
                     config_lib.model_config("small-gpt2-random"),
                     generative__epochs=2, loss="xent")
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    gen = results["generative"]["small-gpt2-random"]
    # Random byte-level weights start near log(256) = 5.5 nats per token.
    assert gen["heldout_nll"]["after"] < gen["heldout_nll"]["before"] - 1.0
    ctx = setup.build(config, workdir)
    trained = generative_stage.backbone_params(_generative_of(ctx))
    for name in ("ceiling", "w2s"):
        record, _ = _stage(workdir, results, name)
        assert record["spec"]["learner"]["start"] == gen["key"]
        assert results["stages"][name]["model"] == "small-gpt2-random (generative)"
    assert "start" not in results["stages"]["weak"]["learner"]
    # The strong learner's initial backbone is the generative stage's.
    learner = ctx.learner(1)
    _, params = learner.init(2, config.seed, ctx.mesh)
    flat_init = _leaves(params["backbone"])
    flat_trained = _leaves(trained)
    assert flat_init.keys() == flat_trained.keys()
    # The token table holds the rows of the run's ids (models/vocabulary.py).
    flat_trained["wte/embedding"] = learner.vocab.table(flat_trained["wte/embedding"])
    for key in flat_trained:
        np.testing.assert_array_equal(np.asarray(flat_init[key]), flat_trained[key])
    pretrained = _leaves(setup.build(_without_generative(config), workdir)
                         .learner(1).init(2, config.seed, ctx.mesh)[1]["backbone"])
    assert any(not np.array_equal(np.asarray(pretrained[k]), flat_trained[k])
               for k in flat_trained)


def _generative_of(ctx):
    ctx.start(len(ctx.models) - 1)
    return ctx.generative[len(ctx.models) - 1]


def _without_generative(config):
    config = config.copy_and_resolve_references()
    config.generative.epochs = 0
    return config


def _leaves(tree):
    import flax
    return flax.traverse_util.flatten_dict(tree, sep="/")


def _mesh():
    from w2s_jax.core import sharding
    return sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
