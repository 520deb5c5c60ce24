"""Several weak supervisors: combining and routing on hand-made arrays, and
the ensemble and cosupervision recipes end to end on tiny models, checked
against values recomputed (in numpy, no shared code) from the stages'
stored arrays and the fingerprints of what each stage trained on."""
import numpy as np
import pytest

from test_recipes import _bow, _config, _frozen, _stage, check_results_from_arrays, mirror  # noqa: F401
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core import stages
from w2s_jax.core.errors import UsageError
from w2s_jax.experiment import setup
from w2s_jax.train import supervisors


def _vote(probs):
    """Majority of argmaxes; among tied classes the highest mean wins."""
    k = probs.shape[-1]
    votes = np.stack([np.bincount(col, minlength=k)
                      for col in probs.argmax(-1).T])
    mean = probs.mean(0)
    winner = np.where(votes == votes.max(-1, keepdims=True), mean,
                      -np.inf).argmax(-1)
    return np.eye(k, dtype=np.float32)[winner]


def _route(teachers, student):
    """Per example, the teacher with the lowest -sum_c t_c log s_c."""
    loss = -(teachers * np.log(np.clip(student, 1e-12, 1.0))[None]).sum(-1)
    chosen = loss.argmin(0)
    return teachers[chosen, np.arange(teachers.shape[1])], chosen, loss


def test_combine_mean_and_vote_with_ties():
    by_example = np.array([
        # Votes 0, 0, 1, but the third supervisor is so sure of class 1
        # that the mean picks 1: the vote says 0.
        [[0.60, 0.30, 0.10], [0.55, 0.40, 0.05], [0.05, 0.90, 0.05]],
        # Votes 0, 1, 1: 1 either way.
        [[0.36, 0.30, 0.34], [0.29, 0.37, 0.34], [0.29, 0.37, 0.34]],
        # Votes 0, 1, 2: a three-way tie, to the highest mean (class 2),
        # not to the lowest class.
        [[0.50, 0.30, 0.20], [0.20, 0.45, 0.35], [0.10, 0.20, 0.70]],
    ], np.float32)
    probs = by_example.transpose(1, 0, 2)  # [S=3, N=3, K=3]
    mean = np.asarray(supervisors.combine(probs, "mean"))
    np.testing.assert_allclose(mean, probs.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(mean.argmax(-1), [1, 1, 2])
    vote = np.asarray(supervisors.combine(probs, "vote"))
    np.testing.assert_array_equal(vote, np.eye(3)[[0, 1, 2]])
    # A tie of 2 votes each between classes 0 and 1: the tied class with the
    # higher mean (1: 0.335 > 0.325) wins, not the lower class, and not class
    # 2, which has the highest mean (0.34) but no vote.
    tie = np.array([[[0.36, 0.30, 0.34]], [[0.36, 0.30, 0.34]],
                    [[0.29, 0.37, 0.34]], [[0.29, 0.37, 0.34]]], np.float32)
    assert tie.mean(0)[0].argmax() == 2
    np.testing.assert_array_equal(supervisors.combine(tie, "vote"), [[0, 1, 0]])
    # Binary, two supervisors that disagree: the more confident one wins.
    split = np.array([[[0.6, 0.4], [0.1, 0.9]], [[0.2, 0.8], [0.95, 0.05]]],
                     np.float32)
    np.testing.assert_array_equal(supervisors.combine(split, "vote"),
                                  [[0, 1], [1, 0]])
    np.testing.assert_array_equal(supervisors.combine(split, "vote"),
                                  _vote(split))
    with pytest.raises(ValueError, match="how='max'.*mean, vote"):
        supervisors.combine(split, "max")


def test_route_picks_the_teacher_the_student_agrees_with():
    teachers = np.array([
        [[0.60, 0.40], [0.30, 0.70], [0.80, 0.20]],
        [[0.95, 0.05], [0.90, 0.10], [0.10, 0.90]],
        [[0.20, 0.80], [0.10, 0.90], [0.55, 0.45]],
    ], np.float32)  # [S=3, N=3, K=2]
    student = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], np.float32)
    routed, chosen = (np.asarray(a) for a in supervisors.route(teachers, student))
    # ex 0: the teacher most sure of the student's class (1, not 0 at 0.6);
    # ex 1: teacher 2 (class 1 at 0.9); ex 2: teacher 0 (0.8 on class 0),
    # not teacher 2, which also agrees but less surely.
    np.testing.assert_array_equal(chosen, [1, 2, 0])
    np.testing.assert_array_equal(routed, teachers[[1, 2, 0], [0, 1, 2]])
    # A student probability of 0 gives a finite loss, not nan.
    _, chosen = supervisors.route(teachers, np.array(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32))
    np.testing.assert_array_equal(chosen, [1, 2, 0])
    # Random 3-class case against the numpy formula.
    rng = np.random.default_rng(0)
    teachers = rng.dirichlet(np.ones(3), size=(4, 300)).astype(np.float32)
    student = rng.dirichlet(np.ones(3), size=300).astype(np.float32)
    expected, expected_chosen, _ = _route(teachers, student)
    routed, chosen = supervisors.route(teachers, student)
    np.testing.assert_array_equal(chosen, expected_chosen)
    np.testing.assert_array_equal(routed, expected)


@pytest.mark.parametrize("recipe", ["ensemble", "cosupervision"])
def test_recipes_need_two_models_and_valid_settings(recipe):
    config = config_lib.base_config()
    config.recipe = recipe
    config.models.m1 = config_lib.model_config("bow-tfidf")
    with pytest.raises(UsageError, match=f"recipe='{recipe}' needs at least 2 models"):
        config_lib.validate(config)
    config.models.m2 = config_lib.model_config("minilm-l6")
    config_lib.validate(config)
    config.ensemble.combine = "median"
    with pytest.raises(UsageError, match="config.ensemble.combine='median' is "
                                         "not valid; choose one of: mean, vote"):
        config_lib.validate(config)
    config.ensemble.combine = "vote"
    config.cosupervision.rounds = 0
    with pytest.raises(UsageError, match="config.cosupervision.rounds=0 must be "
                                         "a positive integer"):
        config_lib.validate(config)


def _models():
    return _bow(), _frozen(), _frozen("small-gpt2-random")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("supervisors"))


@pytest.fixture(scope="module")
def ensemble_run(mirror, workdir):  # noqa: F811
    config = _config(mirror, *_models(), recipe="ensemble", loss="xent")
    return config, run.run(config, workdir)


def _specs(workdir, results):
    return {name: _stage(workdir, results, name)[0]["spec"]
            for name in results["stages"]}


def test_ensemble_combines_the_stored_supervisors(ensemble_run, workdir):
    config, results = ensemble_run
    arrays = check_results_from_arrays(workdir, results)
    assert list(results["stages"]) == ["weak_m1", "weak_m2", "ensemble", "w2s_m1",
                                       "w2s_m2", "w2s_ensemble", "ceiling"]
    ctx = setup.build(config, workdir)
    half_a, half_b = ctx.halves()
    gold_b = ctx.train_labels[half_b]
    # m1 is the w2s and bootstrap recipes' "weak" stage (one cache entry).
    assert results["stages"]["weak_m1"]["path"].startswith("stages/weak-")
    specs = _specs(workdir, results)
    for i, name in enumerate(("weak_m1", "weak_m2")):
        assert specs[name]["train_data"] == [ctx.learner(i).fingerprint("train", half_a),
                                             stages.fingerprint(ctx.gold(half_a))]
    weak_b = np.stack([arrays[n]["B_probs"] for n in ("weak_m1", "weak_m2")])
    weak_test = np.stack([arrays[n]["test_probs"] for n in ("weak_m1", "weak_m2")])
    ens = arrays["ensemble"]
    np.testing.assert_allclose(ens["B_probs"], weak_b.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ens["test_probs"], weak_test.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(ens["B_correct"], ens["B_probs"].argmax(-1) == gold_b)
    # Each student: the last model on half B with its supervisor's labels.
    strong = ctx.learner(2)
    for student, source in (("w2s_m1", "weak_m1"), ("w2s_m2", "weak_m2"),
                            ("w2s_ensemble", "ensemble")):
        assert specs[student]["train_data"] == [
            strong.fingerprint("train", half_b),
            stages.fingerprint(arrays[source]["B_probs"])]
        misfit = results["comparisons"][student]["misfit"]
        assert misfit["disagreement"] == pytest.approx(np.mean(
            arrays[student]["train_probs"].argmax(-1) != arrays[source]["B_probs"].argmax(-1)))
    details = results["recipe_details"]
    assert details["combined_B_accuracy"] == pytest.approx(
        np.mean(weak_b.mean(0).argmax(-1) == gold_b))
    assert details["supervisors"]["weak_m2"]["B_accuracy"] == pytest.approx(
        np.mean(weak_b[1].argmax(-1) == gold_b))
    assert results["stages"]["w2s_ensemble"]["targets_quality"]["accuracy"] == \
        pytest.approx(details["combined_B_accuracy"])


def test_ensemble_vote_with_hard_labels(ensemble_run, mirror, workdir):  # noqa: F811
    config = _config(mirror, *_models(), recipe="ensemble", loss="xent",
                     ensemble__combine="vote", weak_labels="hard")
    results = run.run(config, workdir)
    check_results_from_arrays(workdir, results)
    # The supervisors are the mean run's, reused from the cache.
    for name in ("weak_m1", "weak_m2"):
        assert results["stages"][name]["key"] == ensemble_run[1]["stages"][name]["key"]
    arrays = {name: _stage(workdir, results, name)[1] for name in results["stages"]}
    weak_b = np.stack([arrays[n]["B_probs"] for n in ("weak_m1", "weak_m2")])
    vote = _vote(weak_b)
    # Two supervisors: every disagreement is a tie, settled by the mean.
    assert np.any(weak_b[0].argmax(-1) != weak_b[1].argmax(-1))
    np.testing.assert_array_equal(arrays["ensemble"]["B_probs"], vote)
    specs = _specs(workdir, results)
    assert specs["w2s_ensemble"]["train_data"][1] == stages.fingerprint(vote)
    hard_m1 = np.eye(2, dtype=np.float32)[weak_b[0].argmax(-1)]
    assert specs["w2s_m1"]["train_data"][1] == stages.fingerprint(hard_m1)
    assert results["recipe_details"]["combine"] == "vote"


def test_cosupervision_routes_each_round_by_the_previous_student(
        ensemble_run, mirror, workdir):  # noqa: F811
    config = _config(mirror, *_models(), recipe="cosupervision", loss="xent",
                     cosupervision__rounds=2)
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)
    assert list(results["stages"]) == ["weak_m1", "weak_m2", "ensemble", "cosup_r0",
                                       "cosup_r1", "cosup_r2", "ceiling"]
    # Round 0 is the ensemble recipe's mean-label student, from the cache.
    for name, shared in (("cosup_r0", "w2s_ensemble"), ("ensemble", "ensemble")):
        assert results["stages"][name]["key"] == ensemble_run[1]["stages"][shared]["key"]
    ctx = setup.build(config, workdir)
    half_b = ctx.halves()[1]
    gold_b = ctx.train_labels[half_b]
    teachers = np.stack([arrays[n]["B_probs"] for n in ("weak_m1", "weak_m2")])
    specs = _specs(workdir, results)
    rounds = results["recipe_details"]["rounds"]
    for r in (1, 2):
        routed, chosen, loss = _route(teachers, arrays[f"cosup_r{r - 1}"]["train_probs"])
        # Near-ties (float rounding could pick either) must be rare.
        assert np.mean(np.abs(loss[0] - loss[1]) < 1e-5) < 0.02
        assert specs[f"cosup_r{r}"]["train_data"] == [
            ctx.learner(2).fingerprint("train", half_b), stages.fingerprint(routed)]
        assert rounds[r]["share"] == pytest.approx(
            {"weak_m1": np.mean(chosen == 0), "weak_m2": np.mean(chosen == 1)})
        assert rounds[r]["B_accuracy"] == pytest.approx(np.mean(routed.argmax(-1) == gold_b))
        assert results["stages"][f"cosup_r{r}"]["targets_quality"]["accuracy"] == \
            pytest.approx(rounds[r]["B_accuracy"])
    assert results["recipe_details"]["any_teacher_right_B"] == pytest.approx(
        np.mean((teachers.argmax(-1) == gold_b).any(0)))
    comps = results["comparisons"]
    assert {c["supervisor"] for c in comps.values()} == {"ensemble"}
    assert [name for name, c in comps.items() if "misfit" in c] == ["cosup_r0"]
