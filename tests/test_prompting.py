"""Zero- and few-shot prompting: verbalizer tokens, prompt fitting, scoring
on a hand-built decoder, calibration, and the recipe end to end."""
import json
import os

import jax
import numpy as np
import pytest

from test_recipes import _config, _stage, check_results_from_arrays, mirror  # noqa: F401
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core import sharding, stages
from w2s_jax.core.errors import UsageError
from w2s_jax.experiment import setup
from w2s_jax.models import offline, registry, tokenizers
from w2s_jax.train import prompting, steps

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
BYTES = tokenizers.ByteTokenizer()


def _decode(ids):
    return bytes(int(i) for i in ids).decode("utf-8")


# --- verbalizers -----------------------------------------------------------

def test_byte_verbalizers_are_single_bytes_and_words_are_refused():
    assert prompting.verbalizer_ids(BYTES, ["N", "Y"], "tiny") == [78, 89]
    with pytest.raises(UsageError, match=r"' Yes' encodes to 4 tokens \[32, 89, 101, 115\]"):
        prompting.verbalizer_ids(BYTES, ["N", " Yes"], "tiny")
    with pytest.raises(UsageError, match="'Y' and 'Y' are the same token"):
        prompting.verbalizer_ids(BYTES, ["Y", "Y"], "tiny")


def _vocab_id(path, piece):
    with open(os.path.join(path, "tokenizer.json")) as f:
        return json.load(f)["model"]["vocab"][piece]


def test_smollm2_verbalizers_are_its_vocabulary_entries():
    missing = offline.OFFLINE_SOURCES[SMOLLM2].missing()
    if missing:
        pytest.skip(f"offline packages not installed: {', '.join(missing)}")
    path = offline.checkpoint_dir(SMOLLM2)
    tok = tokenizers.HFTokenizer(path)
    # Byte-level BPE: "Ġ" is the leading space.
    assert prompting.verbalizer_ids(tok, [" negative", " positive"], "smollm2") == [
        _vocab_id(path, "Ġnegative"), _vocab_id(path, "Ġpositive")]
    with pytest.raises(UsageError, match="' unremarkably' encodes to [2-9] tokens"):
        prompting.verbalizer_ids(tok, [" good", " unremarkably"], "smollm2")


def test_gpt2_verbalizers_where_its_tokenizer_is_cached():
    import huggingface_hub
    try:
        path = huggingface_hub.snapshot_download(
            "openai-community/gpt2", allow_patterns=["*.json", "*.txt"],
            local_files_only=True)
    except Exception:  # not in the cache: nothing to check offline
        pytest.skip("GPT-2's tokenizer is not in the Hugging Face cache")
    tok = tokenizers.HFTokenizer(path)
    with open(os.path.join(path, "vocab.json")) as f:
        vocab = json.load(f)
    assert prompting.verbalizer_ids(tok, [" No", " Yes"], "gpt2") == [
        vocab["ĠNo"], vocab["ĠYes"]]


# --- prompts -----------------------------------------------------------------

DEMOS = [("aaaa", "N"), ("bbbb", "Y"), ("cccc", "N")]
TEMPLATE = "T:{text}\nA:"


def test_render_joins_instruction_demonstrations_and_query():
    assert prompting.render("I", DEMOS[:2], TEMPLATE, "qq") == (
        "I\n\nT:aaaa\nA:N\n\nT:bbbb\nA:Y\n\nT:qq\nA:")
    assert prompting.render("", [], TEMPLATE, "qq") == "T:qq\nA:"


def test_prompts_drop_whole_demonstrations_from_the_left_then_cut_the_query():
    full = prompting.render("I", DEMOS, TEMPLATE, "qq")  # 40 bytes
    two = prompting.render("I", DEMOS[1:], TEMPLATE, "qq")
    long_query = "x" * 30 + "END"
    prompts = prompting.build_prompts(
        BYTES, ["qq", "qqqqqq", long_query], instruction="I", demos=DEMOS,
        template=TEMPLATE, max_ctx=len(two))
    # "qq" fits once the oldest demonstration is gone, "qqqqqq" after two.
    assert _decode(prompts.ids[0]) == two
    assert _decode(prompts.ids[1]) == prompting.render("I", DEMOS[2:], TEMPLATE, "qqqqqq")
    assert prompts.dropped.tolist() == [1, 2, 3]
    assert prompts.truncated.tolist() == [False, False, True]
    # The long query keeps the instruction and the answer cue, and as much
    # of its text's end as fits.
    kept = len(two) - len("I\n\nT:\nA:")
    assert _decode(prompts.ids[2]) == f"I\n\nT:{long_query[-kept:]}\nA:"
    assert len(prompts.ids[2]) == len(two)
    assert len(full) > len(two)
    with pytest.raises(UsageError, match="instruction and template alone are 8 tokens"):
        prompting.build_prompts(BYTES, ["qq"], instruction="I", demos=DEMOS,
                                template=TEMPLATE, max_ctx=7)


def test_demonstrations_are_class_balanced_when_the_labels_allow():
    labels = np.array([0] * 2 + [1] * 20)
    draw = prompting.draw_demonstrations(labels, 6, 2, np.random.default_rng(0))
    assert sorted(labels[draw].tolist()) == [0, 0, 1, 1, 1, 1]  # only 2 zeros
    assert len(set(draw.tolist())) == 6
    labels = np.array([0, 1] * 10)
    draw = prompting.draw_demonstrations(labels, 8, 2, np.random.default_rng(1))
    assert np.bincount(labels[draw]).tolist() == [4, 4]
    again = prompting.draw_demonstrations(labels, 8, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(draw, again)
    with pytest.raises(UsageError, match="shots=30 is more than the 20"):
        prompting.draw_demonstrations(labels, 30, 2, np.random.default_rng(1))


# --- scoring and calibration -----------------------------------------------------

def test_calibration_divides_by_the_content_free_prior():
    logprobs = np.log([[0.6, 0.2]])
    np.testing.assert_allclose(prompting.class_probs(logprobs), [[0.75, 0.25]],
                               rtol=1e-6)
    # (0.6 / 0.8, 0.2 / 0.1) = (0.75, 2), renormalised.
    np.testing.assert_allclose(
        prompting.class_probs(logprobs, np.log([[0.8, 0.1]])),
        [[0.75 / 2.75, 2 / 2.75]], rtol=1e-6)


def _answering_gpt2(mesh):
    """tiny-gpt2-random made to answer by the last token: blocks and
    positions zeroed, so the final state is ln_f(wte[last token]); "a"'s
    embedding points at "Y"'s, "b"'s at "N"'s, every other row is zero."""
    model = registry.resolve("tiny-gpt2-random")
    module = steps.build_classifier(model, num_classes=2, linear_probe=True,
                                    head_init="zeros")
    params = jax.tree.map(np.asarray, steps.init_params(
        module, model, head_init="zeros", seed=0, mesh=mesh)["backbone"])
    params = {k: (jax.tree.map(np.zeros_like, v) if k.startswith("h_") else v)
              for k, v in params.items()}
    wte = np.zeros_like(params["wte"]["embedding"])
    e = np.eye(wte.shape[1], dtype=np.float32)
    wte[ord("Y")], wte[ord("N")] = 3 * e[0], 3 * e[1]
    wte[ord("a")], wte[ord("b")] = e[0] - e[1], e[1] - e[0]
    params["wte"]["embedding"] = wte
    params["wpe"]["embedding"] = np.zeros_like(params["wpe"]["embedding"])
    params["ln_f"] = {"scale": np.ones_like(params["ln_f"]["scale"]),
                      "bias": np.zeros_like(params["ln_f"]["bias"])}
    return model, params


def test_few_shot_scoring_reads_the_last_real_token_of_each_prompt():
    mesh = sharding.make_mesh({"data": -1})
    model, params = _answering_gpt2(mesh)
    ids = prompting.verbalizer_ids(model.tokenizer, ["N", "Y"], model.name)
    queries = ["xxa", "b", "yyyyyyyyyyyyyyb", "qa", "zzzzzzzzb"]
    prompts = prompting.build_prompts(
        model.tokenizer, queries, instruction="Say.", template="{text}",
        demos=[("ha", "Y"), ("hb", "N")], max_ctx=64)
    step = prompting.make_score_step(model, ids, mesh, sharding.replicated(mesh))
    logprobs = prompting.score(step, params, prompts.ids, num_classes=2,
                               pad_id=0, batch_size=8, max_ctx=64, mesh=mesh)
    # By hand: layer norm of the last token's embedding, times the table.
    wte, eps = params["wte"]["embedding"], model.backbone_config.layer_norm_epsilon
    for query, row in zip(queries, logprobs):
        x = wte[ord(query[-1])].astype(np.float64)
        h = (x - x.mean()) / np.sqrt(x.var() + eps)
        logits = wte @ h
        expected = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        np.testing.assert_allclose(row, expected[ids], rtol=1e-4, atol=1e-4)
    answers = prompting.class_probs(logprobs).argmax(-1)
    assert answers.tolist() == [1 if q.endswith("a") else 0 for q in queries]


# --- config ---------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("shots", -1, "shots=-1 must be an integer >= 0"),
    ("verbalizers", " Yes", "verbalizers=' Yes' must be at least 2"),
    ("verbalizers", " No|| Yes", "verbalizers=' No|| Yes' must be at least 2"),
    ("template", "Review:", r"template='Review:' must contain \{text\}.*found none"),
    ("template", "{text} {label}", "found label, text"),
    ("template", "{text", "found <ValueError"),
    ("template", "{text:d}", "found <ValueError: Unknown format code"),
])
def test_bad_prompting_values_are_refused_naming_them(field, value, message):
    config = config_lib.base_config()
    config.prompting[field] = value
    with pytest.raises(UsageError, match=message):
        config_lib.validate(config)


@pytest.mark.parametrize("strong", ["minilm-l6", "bow-tfidf"])
def test_prompting_refuses_a_last_model_that_is_not_a_decoder(strong):
    config = config_lib.base_config()
    config.recipe = "prompting"
    config.weak, config.strong = (config_lib.model_config("bow-tfidf"),
                                  config_lib.model_config(strong))
    with pytest.raises(UsageError, match=f"needs a decoder as the last model; "
                                         f"'{strong}' is a"):
        config_lib.validate(config)


# --- the recipe -----------------------------------------------------------------

def test_prompting_recipe_shares_the_w2s_stages_and_scores_from_stored_arrays(
        mirror, tmp_path):  # noqa: F811
    workdir = str(tmp_path)
    w2s_config = _config(mirror, config_lib.model_config("bow-tfidf", epochs=4),
                         config_lib.model_config("tiny-gpt2-random",
                                                 mode="features", epochs=2),
                         max_ctx=64)
    w2s_results = run.run(w2s_config, workdir)
    config = _config(mirror, config_lib.model_config("bow-tfidf", epochs=4),
                     config_lib.model_config("tiny-gpt2-random", mode="features",
                                             epochs=2),
                     max_ctx=64, recipe="prompting", prompting__shots=2,
                     prompting__verbalizers="N|Y", prompting__calibrate=True,
                     prompting__instruction="Sentiment.")
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)
    # The finetuning stages are the w2s recipe's, from the cache.
    for name in ("weak", "ceiling", "w2s"):
        assert results["stages"][name]["key"] == w2s_results["stages"][name]["key"]
    assert set(results["comparisons"]) == {"w2s", "few_shot"}
    few = results["comparisons"]["few_shot"]
    assert (few["supervisor"], few["student"], few["ceiling"]) == (
        "weak", "few_shot_weak", "few_shot_gold")
    # The demonstrations: the same examples of half B, with gold labels and
    # with the weak model's argmax there.
    ctx = setup.build(config, workdir)
    half_b = ctx.halves()[1]
    demos = results["recipe_details"]["demonstrations"]
    idx = np.array(demos["train_indices"])
    positions = np.searchsorted(half_b, idx)
    np.testing.assert_array_equal(half_b[positions], idx)
    assert demos["gold"] == ctx.train_labels[idx].tolist()
    assert demos["weak"] == arrays["weak"]["B_probs"][positions].argmax(-1).tolist()
    assert results["stages"]["few_shot_weak"]["targets_quality"]["accuracy"] == \
        pytest.approx(np.mean(np.array(demos["weak"]) == np.array(demos["gold"])))
    assert results["recipe_details"]["verbalizer_ids"] == [ord("N"), ord("Y")]
    # Each prompt as rebuilt here is what the stage scored; its probabilities
    # are the calibrated softmax of the stored log-probabilities.
    for name, labels in (("zero_shot", None), ("few_shot_gold", demos["gold"]),
                         ("few_shot_weak", demos["weak"])):
        record, arr = _stage(workdir, results, name)
        shown = [] if labels is None else [
            (ctx.texts["train"][i], "NY"[c]) for i, c in zip(idx, labels)]
        prompts = prompting.build_prompts(
            ctx.models[-1].tokenizer, ctx.texts["test"], instruction="Sentiment.",
            demos=shown, template=config.prompting.template, max_ctx=64)
        assert record["spec"]["prompts"] == stages.fingerprint(*prompts.ids)
        np.testing.assert_array_equal(arr["test_demos_dropped"], prompts.dropped)
        counts = sorted(set(prompts.dropped.tolist()))
        prior = arr["content_free_logprobs"][np.searchsorted(counts, prompts.dropped)]
        z = arr["test_logprobs"] - prior
        expected = np.exp(z - z.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(arr["test_probs"], expected, rtol=1e-5, atol=1e-6)
        info = results["recipe_details"]["prompting"][name]
        assert info["demonstrations_dropped_mean"] == pytest.approx(prompts.dropped.mean())
        labels_test = ctx.test_labels
        assert info["accuracy_uncalibrated"] == pytest.approx(
            np.mean(arr["test_logprobs"].argmax(-1) == labels_test))
        assert info["accuracy_calibrated"] == pytest.approx(
            results["gold_test"][name]["accuracy"])
    # max_ctx 64 cannot hold two demonstrations of these rows: some dropped.
    assert results["recipe_details"]["prompting"]["few_shot_gold"][
        "demonstrations_dropped_mean"] > 0
