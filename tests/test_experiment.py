"""End to end: the smoke experiment on real mirrored data, run twice."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A few hundred examples, short contexts, one epoch: a CI-sized smoke run.
SMALL = ["--config.n_train=256", "--config.n_test=128", "--config.max_ctx=64",
         "--config.train.epochs=1", "--config.train.batch_size=32",
         "--config.train.eval_batch_size=64"]


def _run(workdir, *extra):
    cmd = [sys.executable, "-m", "w2s_jax.main", "--config=configs/smoke.py",
           f"--workdir={workdir}", *SMALL, *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _results_file(workdir):
    directory = os.path.join(workdir, "results")
    names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    assert len(names) == 1, names
    return os.path.join(directory, names[0])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("smoke"))
    first = _run(workdir)
    with open(_results_file(workdir), "rb") as f:
        first_bytes = f.read()
    second = _run(workdir)
    return workdir, first, second, first_bytes


def test_results_file_has_every_field(smoke_run):
    from test_recipes import check_results_from_arrays

    workdir, first, _, _ = smoke_run
    with open(_results_file(workdir)) as f:
        results = json.load(f)
    assert results["stage_order"] == ["weak", "w2s", "ceiling"]
    for stage in ("weak", "ceiling", "w2s"):
        assert results["gold_test"][stage]["n"] == results["data"]["n_test"] == 128
        assert results["stages"][stage]["steps"] == 128 // 32
    check_results_from_arrays(workdir, results)
    comp = results["comparisons"]["w2s"]
    assert (comp["supervisor"], comp["student"], comp["ceiling"]) == ("weak", "w2s", "ceiling")
    assert comp["agreement"]["n_weak_correct"] + comp["agreement"]["n_weak_wrong"] == 128
    assert results["recipe_details"]["halves"] == {"A": 128, "B": 128}
    assert results["data"]["source"] == "mirror"
    assert results["data"]["overlength_policy"] == "truncate"
    assert results["loss"] == "logconf" and results["recipe"] == "w2s"
    assert results["stages"]["w2s"]["loss_params"] == {
        "alpha_max": 0.5, "schedule": "linear", "warmup_frac": 0.2}
    assert results["config"]["train"]["epochs"] == 1
    # The readable table is printed and written beside the JSON.
    assert "| w2s | small-gpt2-random | soft weak labels, half B (128) |" in first
    assert "| w2s | weak -> w2s (ceiling) |" in first
    assert os.path.exists(_results_file(workdir)[:-5] + ".md")
    # Progress lines: step, loss, rate, ETA.
    assert "[weak] step 4/4 loss" in first and "ex/s ETA" in first


def test_second_run_reuses_every_stage(smoke_run):
    workdir, _, second, first_bytes = smoke_run
    for stage in ("weak", "ceiling", "w2s"):
        assert f"[{stage}] reusing finished stage" in second
    assert "step 1/" not in second, "a stage was retrained"
    with open(_results_file(workdir), "rb") as f:
        assert f.read() == first_bytes


def test_weak_labels_are_stored(smoke_run):
    import numpy as np

    workdir, *_ = smoke_run
    stages = os.listdir(os.path.join(workdir, "stages"))
    weak = [s for s in stages if s.startswith("weak-")]
    assert len(weak) == 1
    with np.load(os.path.join(workdir, "stages", weak[0], "arrays.npz")) as z:
        soft, hard, correct = z["B_probs"], z["B_hard"], z["B_correct"]
    assert soft.shape == (128, 2)
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(hard, soft.argmax(-1))
    assert correct.dtype == bool and correct.shape == (128,)
