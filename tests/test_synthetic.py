"""Synthetic supervisors: the realised error rate is what was asked (within
binomial sampling error), errors fall where asked, soft labels carry the
asked confidence, the same seed gives the same labels; and the recipe end
to end: the student trains on exactly the rule's labels and every number
of the results recomputes from the stored arrays."""
import re

import numpy as np
import pytest

from test_recipes import _config, _frozen, _stage, check_results_from_arrays, mirror  # noqa: F401
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core import stages
from w2s_jax.core.errors import UsageError
from w2s_jax.data import splits
from w2s_jax.experiment import setup
from w2s_jax.train import synthetic

N = 4000


def _data(seed=0, n=N):
    """Balanced labels; texts of varied length, 25% containing "zebra"."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = [("zebra " if i % 4 == 0 else "") + "w" * int(rng.integers(1, 200))
             for i in range(n)]
    return labels, texts


def _within_binomial(realised, p, n, z=4.0):
    return abs(realised - p) <= z * np.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.4])
def test_flip_realised_rate_is_within_sampling_error(rate):
    labels, texts = _data()
    probs, wrong, feature = synthetic.supervise(
        synthetic.Rule("flip", error_rate=rate), labels, texts, 2,
        np.random.default_rng(1))
    assert feature is None
    np.testing.assert_array_equal(probs.argmax(-1) != labels, wrong)
    assert _within_binomial(wrong.mean(), rate, N)
    out = synthetic.realised(labels, wrong, feature, 2)
    assert out["error_rate"] == pytest.approx(wrong.mean())
    for c in (0, 1):  # random flips: no class preference
        assert _within_binomial(out["per_class"][str(c)], rate, np.sum(labels == c))


def test_class_conditional_rates_per_class():
    labels, texts = _data()
    rule = synthetic.Rule("class_conditional", rates=(0.3, 0.1))
    probs, wrong, _ = synthetic.supervise(rule, labels, texts, 2,
                                          np.random.default_rng(2))
    out = synthetic.realised(labels, wrong, None, 2)
    for c, rate in enumerate((0.3, 0.1)):
        assert _within_binomial(out["per_class"][str(c)], rate, np.sum(labels == c))
    # No rates: every error on class 0, at the asked overall rate.
    rule = synthetic.Rule("class_conditional", error_rate=0.2)
    _, wrong, _ = synthetic.supervise(rule, labels, texts, 2,
                                      np.random.default_rng(2))
    assert not wrong[labels == 1].any()
    assert _within_binomial(wrong.mean(), 0.2, N)
    with pytest.raises(ValueError, match="one rate per class"):
        synthetic.supervise(synthetic.Rule("class_conditional", rates=(0.1,)),
                            labels, texts, 2, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["length", "keyword"])
def test_systematic_errors_fall_only_on_the_feature(kind):
    labels, texts = _data()
    rule = synthetic.Rule(kind, error_rate=0.15, length_quantile=0.7,
                          keyword=r"\bZEBRA\b")  # case-insensitive
    _, wrong, feature = synthetic.supervise(rule, labels, texts, 2,
                                            np.random.default_rng(3))
    lengths = np.array([len(t) for t in texts])
    expected = (lengths > np.quantile(lengths, 0.7) if kind == "length"
                else np.array([t.startswith("zebra") for t in texts]))
    np.testing.assert_array_equal(feature, expected)
    # Enough matching examples (30% / 25% > 15%): exactly the asked count,
    # every one on the feature.
    assert wrong.sum() == round(0.15 * N)
    assert not wrong[~feature].any()
    out = synthetic.realised(labels, wrong, feature, 2)
    assert out["feature"]["off"] == 0.0 and out["feature"]["share_of_errors_on"] == 1.0
    assert out["feature"]["on"] == pytest.approx(wrong.sum() / feature.sum())


def test_systematic_errors_with_too_few_matches_take_them_all():
    labels, texts = _data()
    rule = synthetic.Rule("keyword", error_rate=0.5, keyword="zebra")
    _, wrong, feature = synthetic.supervise(rule, labels, texts, 2,
                                            np.random.default_rng(4))
    np.testing.assert_array_equal(wrong, feature)  # all 25%, not 50%
    assert synthetic.realised(labels, wrong, feature, 2)["error_rate"] == 0.25


def test_length_threshold_is_applied_as_given():
    labels, texts = _data()
    rule = synthetic.Rule("length", error_rate=0.01)
    _, _, feature = synthetic.supervise(rule, labels, texts, 2,
                                        np.random.default_rng(0), threshold=150)
    np.testing.assert_array_equal(feature, [len(t) > 150 for t in texts])


@pytest.mark.parametrize("confidence", [1.0, 0.8, 0.6])
def test_confidence_gives_the_asked_soft_probability(confidence):
    labels, texts = _data()
    probs, wrong, _ = synthetic.supervise(
        synthetic.Rule("flip", error_rate=0.3, confidence=confidence),
        labels, texts, 2, np.random.default_rng(5))
    np.testing.assert_allclose(probs.max(-1), confidence, rtol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    chosen = probs.argmax(-1)
    np.testing.assert_array_equal(chosen == labels, ~wrong)
    # Three classes: the rest shared equally by the two others.
    probs3 = synthetic.soft_labels(np.array([0, 2]), 3, confidence)
    np.testing.assert_allclose(probs3[0], [confidence, (1 - confidence) / 2,
                                           (1 - confidence) / 2], rtol=1e-6)


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_same_seed_same_labels_other_seed_other_labels(kind):
    labels, texts = _data()
    rule = synthetic.Rule(kind, error_rate=0.2, keyword="zebra")
    first, second, other = (synthetic.supervise(rule, labels, texts, 2,
                                                np.random.default_rng(s))[0]
                            for s in (7, 7, 8))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_config_rejects_bad_synthetic_fields(mirror):  # noqa: F811
    for field, value, match in (("kind", "noise", "choose one of: flip"),
                                ("error_rate", 1.5, "error_rate"),
                                ("rates", "0.3,2", "rates"),
                                ("length_quantile", 0.0, "length_quantile"),
                                ("keyword", "(", "regular expression"),
                                ("confidence", 0.5, "confidence")):
        config = _config(mirror, _frozen(), recipe="synthetic",
                         **{f"synthetic__{field}": value})
        with pytest.raises(UsageError, match=match):
            config_lib.validate(config)
    config = _config(mirror, _frozen(), recipe="synthetic",
                     synthetic__kind="keyword")
    with pytest.raises(UsageError, match="needs a regex"):
        config_lib.validate(config)


@pytest.mark.parametrize("kind,confidence", [("keyword", 0.8), ("flip", 1.0)])
def test_synthetic_recipe_student_trains_on_the_rules_labels(mirror, tmp_path,  # noqa: F811
                                                             kind, confidence):
    config = _config(mirror, _frozen(), recipe="synthetic", loss="xent",
                     synthetic__kind=kind, synthetic__error_rate=0.25,
                     synthetic__keyword="good|great", synthetic__confidence=confidence)
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)
    assert set(results["stages"]) == {"synthetic", "w2s", "ceiling"}
    assert results["stages"]["synthetic"]["model"] == f"synthetic:{kind}"
    ctx = setup.build(config, workdir)
    half_a, half_b = ctx.halves()
    student = ctx.learner(0)
    sup = arrays["synthetic"]
    # The rule, rerun by hand on half B with the recipe's seed stream.
    texts = ctx.texts
    rule = synthetic.Rule(kind, error_rate=0.25, keyword="good|great",
                          confidence=confidence)
    rng = np.random.default_rng([config.seed, splits.stable_hash("synthetic"),
                                 splits.stable_hash("B")])
    probs, wrong, feature = synthetic.supervise(
        rule, ctx.train_labels[half_b], [texts["train"][i] for i in half_b], 2, rng)
    np.testing.assert_array_equal(sup["B_probs"], probs)
    spec = {name: _stage(workdir, results, name)[0]["spec"] for name in results["stages"]}
    assert spec["w2s"]["train_data"] == [student.fingerprint("train", half_b),
                                         stages.fingerprint(probs)]
    assert spec["ceiling"]["train_data"] == [student.fingerprint("train", half_a),
                                             stages.fingerprint(ctx.gold(half_a))]
    # The realised structure in the results is that of the stored labels.
    realised = results["recipe_details"]["realised"]
    assert realised["B"]["error_rate"] == pytest.approx(1 - sup["B_correct"].mean())
    assert realised["test"]["error_rate"] == pytest.approx(
        1 - results["gold_test"]["synthetic"]["accuracy"])
    assert results["stages"]["w2s"]["targets_quality"]["accuracy"] == \
        pytest.approx(sup["B_correct"].mean())
    assert results["stages"]["w2s"]["targets_quality"]["mean_confidence"] == \
        pytest.approx(confidence)
    if kind == "keyword":
        assert realised["B"]["feature"]["off"] == 0.0
        assert not wrong[~feature].any()
        test_feature = np.array([re.search("good|great", t, re.I) is not None
                                 for t in texts["test"]])
        assert not (~sup["test_correct"])[~test_feature].any()
    else:
        assert realised["B"]["feature"] is None
    assert results["recipe_details"]["rule"]["kind"] == kind
    # A rerun reuses every stage and writes the same results.
    assert run.run(config, workdir) == results


def test_synthetic_kinds_run_every_structure_in_one_table(mirror, tmp_path):  # noqa: F811
    """config.synthetic.kinds: one supervisor and student per kind, each
    the same labels as that kind run alone, all against one ceiling."""
    fields = dict(recipe="synthetic", loss="xent", synthetic__error_rate=0.25,
                  synthetic__keyword="good|great")
    config = _config(mirror, _frozen(), synthetic__kinds="flip,keyword", **fields)
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    check_results_from_arrays(workdir, results)
    assert results["stage_order"] == ["synthetic_flip", "w2s_flip", "synthetic_keyword",
                                      "w2s_keyword", "ceiling"]
    assert results["comparison_order"] == ["w2s_flip", "w2s_keyword"]
    for kind in ("flip", "keyword"):
        alone = run.run(_config(mirror, _frozen(), synthetic__kind=kind, **fields),
                        str(tmp_path / kind))
        # The same rule makes the same labels, so the supervisor stage is the
        # very one the single-kind run trained (one cache key).
        assert results["stages"][f"synthetic_{kind}"]["key"] == alone["stages"]["synthetic"]["key"]
        assert results["recipe_details"]["kinds"][kind]["realised"] == \
            alone["recipe_details"]["realised"]
        assert results["gold_test"][f"w2s_{kind}"]["accuracy"] == pytest.approx(
            alone["gold_test"]["w2s"]["accuracy"])
    config.synthetic.kinds = "flip,noise"
    with pytest.raises(UsageError, match="config.synthetic.kinds='noise'"):
        config_lib.validate(config)
