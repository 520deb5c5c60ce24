"""Recipes end to end on tiny models, checked on stored arrays and
fingerprints: who trained on which examples with which targets, and every
number of the results file recomputed from the stages' stored predictions."""
import json
import os

import numpy as np
import pytest

from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core import stages
from w2s_jax.experiment import setup
from w2s_jax.experiment.recipes import bootstrap

WORDS = {1: ["good", "great", "fine", "lovely"], 0: ["bad", "awful", "dull", "poor"]}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """Learnable sentiment rows (a word decides the label, plus noise)."""
    root = tmp_path_factory.mktemp("mirror")
    rng = np.random.default_rng(0)
    for split, n in (("train", 480), ("validation", 160)):
        (root / "sst2").mkdir(exist_ok=True)
        with open(root / "sst2" / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = int(rng.integers(2))
                # 15% of rows carry the other class's word: not separable.
                word_class = label if rng.random() > 0.15 else 1 - label
                word = WORDS[word_class][int(rng.integers(4))]
                f.write(json.dumps({"sentence": f"a {word} film number {i}",
                                    "label": label, "idx": i}) + "\n")
    return str(root)


def _config(mirror, *models, **fields):
    config = config_lib.base_config()
    config.task, config.data_dir = "sst2", mirror
    config.n_train, config.n_test, config.max_ctx = 384, 128, 32
    config.train.epochs, config.train.log_every = 2, 100
    if len(models) == 2:
        config.weak, config.strong = models
    else:
        for i, model in enumerate(models):
            config.models[f"m{i + 1}"] = model
    for dotted, value in fields.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _bow():
    return config_lib.model_config("bow-tfidf", epochs=4)


def _frozen(name="tiny-gpt2-random"):
    return config_lib.model_config(name, mode="features", epochs=2)


def _stage(workdir, results, name):
    path = os.path.join(workdir, results["stages"][name]["path"])
    with open(os.path.join(path, "record.json")) as f:
        record = json.load(f)
    with np.load(os.path.join(path, "arrays.npz")) as z:
        return record, {k: z[k] for k in z.files}


def _kl(labels, student, eps=1e-12):
    """Mean KL(labels || student) over rows, written out."""
    labels, student = np.asarray(labels, np.float64), np.asarray(student, np.float64)
    return float(np.mean(np.sum(labels * (np.log(labels + eps) - np.log(student + eps)),
                                axis=1)))


def _auroc_by_pairs(scores, labels):
    """P(score_pos > score_neg) + P(tie)/2 over all pairs: no shared code."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def check_results_from_arrays(workdir, results):
    """Accuracy, AUROC, PGR and agreement in the results file, recomputed."""
    arrays = {name: _stage(workdir, results, name)[1] for name in results["stages"]}
    some = next(iter(arrays.values()))
    # Gold test labels from any stage: hard prediction where right, else not.
    labels = np.where(some["test_correct"], some["test_hard"], 1 - some["test_hard"])
    for name, arr in arrays.items():
        np.testing.assert_array_equal(
            np.where(arr["test_correct"], arr["test_hard"], 1 - arr["test_hard"]),
            labels)
        gold = results["gold_test"][name]
        assert gold["accuracy"] == pytest.approx(np.mean(arr["test_probs"].argmax(-1) == labels))
        assert gold["auroc"] == pytest.approx(_auroc_by_pairs(arr["test_probs"][:, 1], labels))
    for comp in results["comparisons"].values():
        acc = {r: np.mean(arrays[comp[r]]["test_probs"].argmax(-1) == labels)
               for r in ("supervisor", "student", "ceiling")}
        expected = ((acc["student"] - acc["supervisor"]) /
                    (acc["ceiling"] - acc["supervisor"])
                    if acc["ceiling"] > acc["supervisor"] else None)
        assert comp["pgr"]["accuracy"] == pytest.approx(expected)
        student = arrays[comp["student"]]["test_probs"].argmax(-1)
        supervisor = arrays[comp["supervisor"]]["test_probs"].argmax(-1)
        right = supervisor == labels
        agree = comp["agreement"]
        assert agree["overall"] == pytest.approx(np.mean(student == supervisor))
        assert agree["weak_correct"] == pytest.approx(np.mean((student == supervisor)[right]))
        assert agree["weak_wrong"] == pytest.approx(np.mean((student == supervisor)[~right]))
    return arrays


@pytest.mark.parametrize("ceiling_half", ["A", "B"])
def test_w2s_trains_each_stage_on_the_right_examples_and_targets(mirror, tmp_path, ceiling_half):
    config = _config(mirror, _bow(), _frozen(), ceiling_half=ceiling_half,
                     loss="xent")
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)
    # Rebuild the run's examples (features come from the cache) and compare
    # fingerprints of what each stage trained on.
    ctx = setup.build(config, workdir)
    half_a, half_b = ctx.halves()
    assert len(np.intersect1d(half_a, half_b)) == 0
    weak, strong = ctx.learner(0), ctx.learner(1)
    spec = {name: _stage(workdir, results, name)[0]["spec"] for name in results["stages"]}
    assert spec["weak"]["train_data"] == [weak.fingerprint("train", half_a),
                                          stages.fingerprint(ctx.gold(half_a))]
    assert spec["w2s"]["train_data"] == [strong.fingerprint("train", half_b),
                                         stages.fingerprint(arrays["weak"]["B_probs"])]
    ceiling_idx = half_a if ceiling_half == "A" else half_b
    assert spec["ceiling"]["train_data"] == [strong.fingerprint("train", ceiling_idx),
                                             stages.fingerprint(ctx.gold(ceiling_idx))]
    # The weak labels are the weak model's predictions on exactly half B.
    assert spec["weak"]["predict_data"]["B"][0] == weak.fingerprint("train", half_b)
    quality = results["stages"]["w2s"]["targets_quality"]
    assert quality["accuracy"] == pytest.approx(np.mean(arrays["weak"]["B_correct"]))
    assert quality["mean_confidence"] == pytest.approx(arrays["weak"]["B_probs"].max(-1).mean())


@pytest.mark.parametrize("pool,kind", [("disjoint", "soft"), ("reuse_b", "hard")])
def test_bootstrap_chain_hands_each_link_its_predecessors_labels(mirror, tmp_path, pool, kind):
    config = _config(mirror, _bow(), _frozen(), _frozen("small-gpt2-random"),
                     recipe="bootstrap", bootstrap__pool=pool,
                     weak_labels=kind)
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)
    ctx = setup.build(config, workdir)
    half_a, half_b = ctx.halves()
    slices = bootstrap.pool_slices(half_b, 2, pool, ctx.train_groups, config.seed)
    if pool == "disjoint":
        assert len(np.intersect1d(*slices)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate(slices)), half_b)
    else:
        for part in slices:
            np.testing.assert_array_equal(part, half_b)

    def handed(probs):
        return probs if kind == "soft" else np.eye(2, dtype=np.float32)[probs.argmax(-1)]

    weak_b = arrays["weak"]["B_probs"]
    on_b = {i: weak_b[np.searchsorted(half_b, s)] for i, s in enumerate(slices)}
    spec = {name: _stage(workdir, results, name)[0]["spec"] for name in results["stages"]}
    assert spec["link2"]["train_data"] == [ctx.learner(1).fingerprint("train", slices[0]),
                                           stages.fingerprint(handed(on_b[0]))]
    assert spec["link2"]["predict_data"]["next"][0] == ctx.learner(1).fingerprint("train", slices[1])
    assert spec["link3"]["train_data"] == [ctx.learner(2).fingerprint("train", slices[1]),
                                           stages.fingerprint(handed(arrays["link2"]["next_probs"]))]
    assert spec["direct"]["train_data"] == [ctx.learner(2).fingerprint("train", slices[1]),
                                            stages.fingerprint(handed(on_b[1]))]
    assert set(results["comparisons"]) == {"chain", "direct"}
    assert results["recipe_details"]["pool"] == pool
    # Misfit: each student's predictions on its own slice against the soft
    # labels it learnt from (link2's for the chain, M1's rows for direct).
    for comp, student, labels in (("chain", "link3", arrays["link2"]["next_probs"]),
                                  ("direct", "direct", on_b[1])):
        fit = results["comparisons"][comp]["misfit"]
        assert fit["disagreement"] == pytest.approx(np.mean(
            arrays[student]["train_probs"].argmax(-1) != labels.argmax(-1)))
        assert fit["kl"] == pytest.approx(_kl(labels, arrays[student]["train_probs"]),
                                          rel=1e-5)


def test_early_stopping_answers_come_from_the_stored_evaluations(mirror, tmp_path):
    config = _config(mirror, _bow(), _frozen(), loss="logconf",
                     early_stopping__eval_every=3)
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    for name in ("weak", "w2s", "ceiling"):
        record, arr = _stage(workdir, results, name)
        steps_seen = arr["eval_steps"]
        total = record["steps"]
        assert steps_seen[-1] == total and list(steps_seen[:-1]) == list(range(3, total, 3))
        labels = np.where(arr["test_correct"], arr["test_hard"], 1 - arr["test_hard"])
        test_acc = [np.mean(p.argmax(-1) == labels) for p in arr["eval_test_probs"]]
        chosen = results["early_stopping"][name]
        assert chosen["oracle"]["accuracy"] == pytest.approx(max(test_acc))
        assert chosen["oracle"]["step"] == steps_seen[int(np.argmax(test_acc))]
        assert chosen["final"]["accuracy"] == pytest.approx(results["gold_test"][name]["accuracy"])
        assert arr["eval_val_probs"].shape[1] == len(arr["val_positions"])
    # Honest: validation accuracy against the stage's own targets (the weak
    # labels), on examples held out of its training.
    w2s_record, w2s_arr = _stage(workdir, results, "w2s")
    weak_b = _stage(workdir, results, "weak")[1]["B_probs"]
    val_targets = weak_b[w2s_arr["val_positions"]].argmax(-1)
    val_acc = [np.mean(p.argmax(-1) == val_targets) for p in w2s_arr["eval_val_probs"]]
    assert results["early_stopping"]["w2s"]["honest_acc"]["step"] == \
        w2s_arr["eval_steps"][int(np.argmax(val_acc))]
    n_b = results["recipe_details"]["halves"]["B"]
    assert w2s_record["examples"] == n_b - len(w2s_arr["val_positions"])
    # PGR of each selection, from the selected accuracies.
    es = results["early_stopping"]
    for selection, pgr in results["comparisons"]["w2s"]["pgr_early_stopping"].items():
        weak, w2s, ceiling = (es[s][selection]["accuracy"] for s in ("weak", "w2s", "ceiling"))
        expected = (w2s - weak) / (ceiling - weak) if ceiling > weak else None
        assert pgr["accuracy"] == pytest.approx(expected)
    assert "oracle (best gold test accuracy: an upper bound" in run.table(results)


def test_new_losses_run_end_to_end_with_their_resolved_parameters(mirror, tmp_path):
    config = _config(mirror, _bow(), _frozen(), losses="kl,window,entropy",
                     seeds="0")
    workdir = str(tmp_path)
    summary = run.run(config, workdir)
    assert set(summary["losses"]) == {"kl", "window", "entropy"}
    names = {loss: entry["runs"][0] for loss, entry in summary["losses"].items()}
    for loss, name in names.items():
        with open(os.path.join(workdir, "results", name + ".json")) as f:
            results = json.load(f)
        check_results_from_arrays(workdir, results)
        params = results["stages"]["w2s"]["loss_params"]
        if loss == "window":
            weak_b = _stage(workdir, results, "weak")[1]["B_probs"]
            assert params == {"radius": pytest.approx(float(np.median(weak_b.max(-1) - 0.5)))}
        elif loss == "entropy":
            assert params == {"alpha_max": 0.5, "schedule": "linear", "warmup_frac": 0.2}
        else:
            assert params == {}


def test_saliency_runs_five_strategies_and_probes_the_finetuned_model(mirror, tmp_path):
    config = _config(mirror, _bow(), config_lib.model_config(
        "tiny-gpt2-random", epochs=1), recipe="saliency", saliency__layers="1,-1",
        n_train=256, n_test=64)
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    arrays = check_results_from_arrays(workdir, results)
    expected = {"weak", "finetune_gold", "finetune_weak"} | {
        f"{s}@{layer}" for s in ("probe_weak", "probe_gold",
                                 "finetune_weak_probe_gold") for layer in (1, -1)}
    assert set(results["stages"]) == expected
    ctx = setup.build(config, workdir)
    half_a, half_b = ctx.halves()
    spec = {name: _stage(workdir, results, name)[0]["spec"] for name in expected}
    for layer in (1, -1):
        frozen = ctx.learner(1, mode="features", layer=layer)
        assert spec[f"probe_weak@{layer}"]["train_data"] == [
            frozen.fingerprint("train", half_b),
            stages.fingerprint(arrays["weak"]["B_probs"])]
        assert spec[f"probe_gold@{layer}"]["train_data"] == [
            frozen.fingerprint("train", half_a), stages.fingerprint(ctx.gold(half_a))]
        # The probe after finetuning reads the finetuned model's features
        # (stored with that stage), not the pretrained ones.
        finetuned = arrays["finetune_weak"][f"features_L{layer}_train"]
        finetuned = (finetuned - finetuned.mean(0)) / (finetuned.std(0) + 1e-6)
        assert not np.allclose(finetuned, frozen.features["train"], atol=1e-2)
        probe = spec[f"finetune_weak_probe_gold@{layer}"]
        assert probe["learner"]["finetuned_stage"] == results["stages"]["finetune_weak"]["key"]
        assert probe["train_data"][0] == stages.fingerprint(finetuned[half_a])
    assert results["recipe_details"]["layers"] == [1, -1]
    # Misfit only for the students of weak labels, against half B's labels.
    fitted = {name for name, comp in results["comparisons"].items() if "misfit" in comp}
    assert fitted == {"finetune_weak", "probe_weak@1", "probe_weak@-1"}
    for name in fitted:
        assert results["comparisons"][name]["misfit"]["kl"] == pytest.approx(
            _kl(arrays["weak"]["B_probs"], arrays[name]["train_probs"]), rel=1e-5)


def test_early_stopping_holds_out_whole_groups():
    from w2s_jax.data import splits
    from w2s_jax.experiment import early_stopping

    # One example per group: exactly a seeded random 10%, as before groups.
    n = 200
    val = early_stopping.validation_split(np.arange(n), 0.1, seed=3)
    order = np.random.default_rng([3, splits.stable_hash("validation")]).permutation(n)
    np.testing.assert_array_equal(val.held_out, np.sort(order[:20]))
    np.testing.assert_array_equal(val.fit, np.sort(order[20:]))
    # Groups of 4 (e.g. questions sharing a passage) stay on one side.
    groups = np.repeat(np.arange(50), 4)
    val = early_stopping.validation_split(groups, 0.1, seed=3)
    assert not set(groups[val.held_out]) & set(groups[val.fit])
    assert len(val.held_out) == 20 and len(val.fit) == 180
