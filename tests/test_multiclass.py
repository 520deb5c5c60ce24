"""A 3-way task end to end: balanced k-way data, k-way heads and soft
labels, the k-class confidence loss, macro AUROC, PGR and agreement, all
recomputed from the stages' stored arrays."""
import dataclasses
import json

import numpy as np
import pytest

from test_recipes import _bow, _config, _frozen, _stage
from w2s_jax import run
from w2s_jax.data import splits, tasks
from w2s_jax.experiment import setup
from w2s_jax.report import metrics

WORDS = {0: ["bad", "awful", "poor"], 1: ["okay", "plain", "average"],
         2: ["good", "great", "lovely"]}


@pytest.fixture
def three_way(tmp_path, monkeypatch):
    """A mirror of a 3-class task (a word decides the class, with noise;
    class 2 twice as common, so balancing has work to do), registered under
    the sst2 spec's name so the tiny configs of test_recipes apply."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mirror"
    (root / "sst2").mkdir(parents=True)
    for split, n in (("train", 720), ("validation", 240)):
        with open(root / "sst2" / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = int(rng.choice(3, p=[0.25, 0.25, 0.5]))
                word_class = label if rng.random() > 0.15 else int(rng.integers(3))
                word = WORDS[word_class][int(rng.integers(3))]
                f.write(json.dumps({"sentence": f"a {word} film number {i}",
                                    "label": label, "idx": i}) + "\n")
    monkeypatch.setitem(tasks.TASKS, "sst2", dataclasses.replace(
        tasks.TASKS["sst2"], num_classes=3))
    return str(root)


def test_three_way_data_is_balanced_over_all_classes(three_way):
    data = splits.load_task("sst2", data_dir=three_way, seed=0, n_train=301,
                            n_test=90)
    # 301 = 3 x 100 + 1: the one left over goes to the first class drawn.
    counts = np.bincount(data.train_labels, minlength=3)
    assert sorted(counts.tolist()) == [100, 100, 101]
    assert np.bincount(data.test_labels, minlength=3).tolist() == [30, 30, 30]
    info = data.provenance["train"]
    assert set(info["class_counts_balanced"].values()) == {
        min(info["class_counts_formatted"].values())}


@pytest.mark.parametrize("loss", ["xent", "logconf"])
def test_three_way_w2s_end_to_end(three_way, tmp_path, loss):
    config = _config(three_way, _bow(), _frozen(), loss=loss, n_train=480,
                     n_test=120)
    workdir = str(tmp_path / "work")
    results = run.run(config, workdir)
    ctx = setup.build(config, workdir)
    assert ctx.num_classes == 3
    labels = ctx.test_labels
    arrays = {name: _stage(workdir, results, name)[1] for name in results["stages"]}
    for name, arr in arrays.items():
        assert arr["test_probs"].shape == (len(labels), 3)
        gold = results["gold_test"][name]
        assert gold["accuracy"] == pytest.approx(np.mean(arr["test_probs"].argmax(-1) == labels))
        # Macro AUROC, one-vs-rest pair counts written out here.
        per_class = []
        for c in range(3):
            pos, neg = arr["test_probs"][labels == c, c], arr["test_probs"][labels != c, c]
            diff = pos[:, None] - neg[None, :]
            per_class.append(np.mean((diff > 0) + 0.5 * (diff == 0)))
        assert gold["auroc"] == pytest.approx(np.mean(per_class))
    # The student learnt from the weak model's 3-way soft labels on half B.
    _, half_b = ctx.halves()
    weak_b = arrays["weak"]["B_probs"]
    assert weak_b.shape == (len(half_b), 3)
    np.testing.assert_allclose(weak_b.sum(-1), 1.0, rtol=1e-5)
    acc = {s: results["gold_test"][s]["accuracy"] for s in ("weak", "w2s", "ceiling")}
    comp = results["comparisons"]["w2s"]
    assert comp["pgr"]["accuracy"] == pytest.approx(
        metrics.pgr(acc["weak"], acc["w2s"], acc["ceiling"]))
    student = arrays["w2s"]["test_probs"].argmax(-1)
    supervisor = arrays["weak"]["test_probs"].argmax(-1)
    assert comp["agreement"]["overall"] == pytest.approx(np.mean(student == supervisor))
    # The words decide the class (up to noise): bow-tfidf learns it; the
    # random tiny model's frozen features still beat chance (1/3).
    assert acc["weak"] > 0.8 and acc["ceiling"] > 0.36
