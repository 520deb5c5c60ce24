"""Reward modelling (mode "reward"): a scalar head scores each completion of
a preference pair alone, and the logits [r(B), r(A)] make every loss,
weak label and metric a Bradley-Terry one. Checked against each completion
scored on its own, the loss written out by hand, and a w2s run on the
mirrored anthropic_hh rows with every number recomputed from its arrays."""
import jax
import numpy as np
import pytest

from test_recipes import _stage, check_results_from_arrays
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core import stages
from w2s_jax.core.errors import DataError, UsageError
from w2s_jax.data import sources, tasks
from w2s_jax.experiment import setup
from w2s_jax.models import classifier, registry
from w2s_jax.train import learners, loop, losses, steps

PAIRS = [  # conversation, reply A, reply B: lengths differ within and across
    ("\n\nHuman: How do I bake bread?", " Mix flour, water, yeast; knead, "
     "proof, bake at 230C.", " No."),
    ("\n\nHuman: hi", " Hello! How can I help?", " Hi there, what would you "
     "like to talk about today? I can help with many things."),
    ("\n\nHuman: Tell me a joke\n\nAssistant: About what?\n\nHuman: cats",
     " Why did the cat sit on the computer? To keep an eye on the mouse.",
     " I'd rather not."),
]


def _texts(pairs=PAIRS):
    """Pairwise anthropic_hh example texts, as the task's formatter writes them."""
    return [f"{c}\n\nResponse A:{a}\n\nResponse B:{b}\n\n"
            f"Is Response A better than Response B?" for c, a, b in pairs]


def _learner(model, pooling, ids, max_ctx=64):
    settings = steps.TrainSettings(
        lr=1e-3, head_lr=None, batch_size=4, minibatch_size=4, epochs=1,
        lr_schedule="constant", warmup_steps=0, weight_decay=0.0,
        eval_batch_size=4, max_ctx=max_ctx, log_every=1)
    return learners.PairLearner("m1", model, config_lib.model_config(
        model.name, mode="reward", head_init="normal"), pooling, settings,
        {"train": ids})


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pair_logits_are_each_completion_scored_alone_b_then_a(pooling):
    model = registry.resolve("tiny-gpt2-random")
    completions = [tasks.hh_completions(t) for t in _texts()]
    ids = learners.PairLearner.tokenize(model.tokenizer, completions,
                                        max_ctx=64, overlength="truncate")
    learner = _learner(model, pooling, ids)
    # A normal head: a zero one scores every completion 0 and hides an error.
    module = steps.build_choice_scorer(model, candidates=2, pairs=True,
                                       linear_probe=False, head_init="normal",
                                       pooling=pooling)
    # Five rows for three examples: two filler rows, completions padded to
    # the longest of all six.
    input_ids, mask = learner.inputs("train", np.arange(3))(np.arange(3), 5)
    params = module.init(jax.random.key(0), input_ids, mask)["params"]
    assert input_ids.shape[:2] == (5, 2) and input_ids.shape[2] >= max(
        len(x) for pair in ids for x in pair)
    logits = np.asarray(module.apply({"params": params}, input_ids, mask))
    assert logits.shape == (5, 2) and np.isfinite(logits).all()

    # Each completion alone, unpadded, through a one-output Classifier with
    # the same weights: the scalar reward r.
    alone = classifier.Classifier(backbone=module.backbone, num_classes=1,
                                  pooling=pooling)

    def reward(x):
        return float(alone.apply({"params": params}, x[None], np.ones_like(x)[None])[0, 0])

    expected = np.array([[reward(b), reward(a)] for a, b in ids])
    np.testing.assert_allclose(logits[:3], expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected[:, 0] - expected[:, 1]).min() > 1e-4  # A != B

    # xent on these logits is the Bradley-Terry loss with soft targets.
    y = np.array([0.9, 0.2, 1.0])  # P(A preferred)
    xent = np.asarray(losses.get_loss("xent").per_example(
        logits=logits[:3], targets=np.stack([1 - y, y], 1), stats=None,
        progress=0.0, params={}))
    r_a, r_b = expected[:, 1], expected[:, 0]

    def log_sigmoid(x):
        return -np.log1p(np.exp(-x))
    bradley_terry = -(y * log_sigmoid(r_a - r_b) + (1 - y) * log_sigmoid(r_b - r_a))
    np.testing.assert_allclose(xent, bradley_terry, rtol=1e-5, atol=1e-6)


def test_pair_inputs_split_over_processes_like_the_whole_batch():
    """Each process's rows (loop._process_inputs), filler rows included, are
    the whole batch's rows, padded to the whole batch's length."""
    model = registry.resolve("tiny-gpt2-random")
    completions = [tasks.hh_completions(t) for t in _texts()]
    ids = learners.PairLearner.tokenize(model.tokenizer, completions,
                                        max_ctx=64, overlength="truncate")
    learner = _learner(model, "last", ids)
    indices = np.array([2, 0, 1])
    lengths = learner.lengths("train", np.arange(3))
    np.testing.assert_array_equal(lengths, [max(len(a), len(b)) for a, b in ids])
    make_inputs = learner.inputs("train", np.arange(3))
    whole = make_inputs(indices, 4)  # row 3 is filler
    for positions in (np.array([0, 1]), np.array([2, 3])):
        mine = loop._process_inputs(make_inputs, lengths, indices,
                                    positions, None)
        for part, full in zip(mine, whole):
            np.testing.assert_array_equal(part, full[positions])
    ids_whole, mask_whole = whole
    # Filler: both completions one real (pad) position, so pooling is defined.
    np.testing.assert_array_equal(mask_whole[3].sum(-1), [1, 1])
    a, b = ids[2]  # row 0 is example 2: A first, B second, right-padded
    np.testing.assert_array_equal(ids_whole[0, 0, :len(a)], a)
    np.testing.assert_array_equal(ids_whole[0, 1, :len(b)], b)
    assert mask_whole[0, 1].sum() == len(b)


def test_completions_keep_their_last_tokens_and_drop_refuses_long_ones():
    model = registry.resolve("tiny-gpt2-random")  # bytes: 1 token per char
    completions = [tasks.hh_completions(t) for t in _texts()]
    ids = learners.PairLearner.tokenize(model.tokenizer, completions,
                                        max_ctx=20, overlength="truncate")
    for (a, b), (text_a, text_b) in zip(ids, completions):
        np.testing.assert_array_equal(a, model.tokenizer.encode([text_a])[0][-20:])
        np.testing.assert_array_equal(b, model.tokenizer.encode([text_b])[0][-20:])
    with pytest.raises(DataError, match="longer than max_ctx=20"):
        learners.PairLearner.tokenize(model.tokenizer, completions,
                                      max_ctx=20, overlength="drop")


def test_reward_mode_refused_for_a_task_without_completions():
    config = config_lib.base_config()
    config.task = "sst2"
    config.strong = config_lib.model_config("gpt2", mode="reward")
    with pytest.raises(UsageError) as err:
        config_lib.validate(config)
    message = str(err.value)
    assert "config.strong.mode='reward'" in message
    assert "'sst2'" in message and "anthropic_hh" in message
    config.task = "anthropic_hh"
    config_lib.validate(config)
    config.strong.head_init = "unembedding"
    with pytest.raises(UsageError, match="head_init='unembedding'.*'zeros'"):
        config_lib.validate(config)


def test_w2s_reward_models_on_anthropic_hh(tmp_path):
    """Weak and strong reward models on the mirrored HH rows (8 devices:
    pairs sharded over the data axis); pairwise accuracy and PGR recomputed
    from the stored arrays, the weak preference probabilities handed on."""
    config = config_lib.base_config()
    config.task = "anthropic_hh"
    config.data_dir = sources.resolve_data_dir(None) or ""
    config.n_train, config.n_test = 128, 64
    config.max_ctx, config.overlength = 256, "truncate"  # byte tokens
    config.weak = config_lib.model_config("tiny-gpt2-random", mode="reward")
    config.strong = config_lib.model_config("small-gpt2-random", mode="reward")
    config.train.epochs, config.train.log_every = 1, 100
    config.train.batch_size = config.train.minibatch_size = 32
    config.train.eval_batch_size = 24  # the last test batch has filler rows
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)

    ctx = setup.build(config, workdir)
    weak, strong = ctx.learner(0), ctx.learner(1)
    assert isinstance(weak, learners.PairLearner)
    half_a, half_b = ctx.halves()
    record = {name: _stage(workdir, results, name)[0] for name in results["stages"]}
    for name in ("weak", "w2s", "ceiling"):
        assert record[name]["spec"]["learner"]["mode"] == "reward"
    assert record["w2s"]["spec"]["train_data"] == [
        strong.fingerprint("train", half_b),
        stages.fingerprint(arrays["weak"]["B_probs"])]
    # Pairwise accuracy: the chosen reply's reward is the higher one, i.e.
    # P(A preferred) > 1/2 exactly when A is the chosen reply (label 1).
    for name, arr in arrays.items():
        p_a = arr["test_probs"][:, 1]
        np.testing.assert_allclose(arr["test_probs"].sum(-1), 1, atol=1e-6)
        assert results["gold_test"][name]["accuracy"] == pytest.approx(
            np.mean((p_a > 0.5) == (ctx.test_labels == 1)))
    # The strong stages scored completions, not the pair text: their
    # fingerprints are of (A, B) ids of every test example.
    assert record["w2s"]["spec"]["predict_data"]["test"][0] == strong.fingerprint(
        "test", np.arange(len(ctx.test_labels)))
