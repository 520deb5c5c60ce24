"""load_task and its steps: carve-out, balancing, selection, halves."""
import json
import os

import numpy as np
import pytest

from w2s_jax.data import sources, splits


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def sentences(n_pos, n_neg, tag):
    rows = ([{"sentence": f"{tag} good {i}", "label": 1} for i in range(n_pos)]
            + [{"sentence": f"{tag} bad {i}", "label": 0} for i in range(n_neg)])
    return [{**row, "idx": i} for i, row in enumerate(rows)]


@pytest.fixture
def sst2_mirror(tmp_path):
    """sst2 with both of its official splits, 3:1 imbalanced."""
    write_jsonl(tmp_path / "sst2" / "train.jsonl", sentences(60, 20, "train"))
    write_jsonl(tmp_path / "sst2" / "validation.jsonl", sentences(30, 10, "val"))
    return str(tmp_path)


@pytest.fixture
def cr_mirror(tmp_path):
    """cr as in the real mirror: one `all` split to carve from."""
    write_jsonl(tmp_path / "cr" / "all.jsonl",
                [{"text": f"review {i}", "label": i % 3 % 2} for i in range(90)])
    return str(tmp_path)


def load(data_dir, name="sst2", seed=0, n_train=None, n_test=None, **kwargs):
    return splits.load_task(name, data_dir=data_dir, seed=seed,
                            n_train=n_train, n_test=n_test, **kwargs)


def counts(labels):
    return np.bincount(labels, minlength=2).tolist()


def test_balance_indices_exact_and_order_preserving():
    labels = np.array([1] * 30 + [0] * 7 + [1] * 5)
    kept = splits.balance_indices(labels, np.random.default_rng(0))
    assert counts(labels[kept]) == [7, 7]
    assert np.all(np.diff(kept) > 0)
    assert set(np.flatnonzero(labels == 0)) <= set(kept)
    again = splits.balance_indices(labels, np.random.default_rng(0))
    np.testing.assert_array_equal(kept, again)


def test_load_task_balances_each_side_to_50_50(sst2_mirror):
    data = load(sst2_mirror)
    assert counts(data.train_labels) == [20, 20]
    assert counts(data.test_labels) == [10, 10]
    assert data.train_labels.dtype == np.int32
    prov = data.provenance
    assert prov["train"]["class_counts_formatted"] == {"0": 20, "1": 60}
    assert prov["train"]["examples_balanced"] == 40
    assert prov["test"]["class_counts"] == {"0": 10, "1": 10}


def test_small_samples_of_a_balanced_pool_stay_balanced(sst2_mirror):
    data = load(sst2_mirror, n_train=10, n_test=7)
    assert counts(data.train_labels) == [5, 5]
    assert sorted(counts(data.test_labels)) == [3, 4]
    assert data.provenance["train"]["n_used"] == 10


def test_balance_off_keeps_every_example(sst2_mirror):
    data = load(sst2_mirror, balance=False)
    assert counts(data.train_labels) == [20, 60]
    assert data.provenance["balance"] is False


def test_official_splits_are_used_when_present(sst2_mirror):
    prov = load(sst2_mirror).provenance
    assert prov["source"] == "mirror"
    assert prov["splits"] == {"train": "train", "test": "validation"}
    assert prov["carve_out"] is None
    assert prov["train"]["rows_read"] == 80 and prov["test"]["rows_read"] == 40


def test_carve_out_is_deterministic_disjoint_and_recorded(cr_mirror):
    first = load(cr_mirror, name="cr", balance=False)
    second = load(cr_mirror, name="cr", balance=False)
    assert first.train_texts == second.train_texts
    assert first.test_texts == second.test_texts
    train, test = set(first.train_texts), set(first.test_texts)
    assert not train & test
    assert train | test == {f"review {i}" for i in range(90)}
    carve = first.provenance["carve_out"]
    assert carve["from_split"] == "all"
    assert carve["test_fraction"] == splits.CARVE_TEST_FRACTION
    assert (carve["rows_read"], carve["rows_train"], carve["rows_test"]) == (
        90, 72, 18)
    assert first.provenance["splits"] == {"train": "all", "test": "all"}
    # The carved test set is fixed by the task, not the experiment seed.
    other_seed = load(cr_mirror, name="cr", seed=5, balance=False)
    assert set(other_seed.test_texts) == test


def test_carve_out_works_on_raw_rows(tmp_path):
    # sciq with only its test split: each question yields one example, and
    # a question must appear on one side only.
    rows = [{"question": f"q{i}?", "correct_answer": "yes", "distractor1": "a",
             "distractor2": "b", "distractor3": "c", "support": ""}
            for i in range(50)]
    write_jsonl(tmp_path / "sciq" / "test.jsonl", rows)
    data = load(str(tmp_path), name="sciq", balance=False)
    question = lambda text: text.split(" A: ")[0]  # noqa: E731
    train = {question(t) for t in data.train_texts}
    test = {question(t) for t in data.test_texts}
    assert len(train) == 40 and len(test) == 10 and not train & test
    assert data.provenance["carve_out"]["from_split"] == "test"


def test_same_seed_same_data_other_seed_other_order(sst2_mirror):
    a, b = load(sst2_mirror, seed=1), load(sst2_mirror, seed=1)
    assert a.train_texts == b.train_texts and a.test_texts == b.test_texts
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert a.provenance == b.provenance
    c = load(sst2_mirror, seed=2)
    assert c.train_texts != a.train_texts


def test_one_class_side_is_an_error(tmp_path):
    write_jsonl(tmp_path / "sst2" / "train.jsonl", sentences(5, 5, "train"))
    write_jsonl(tmp_path / "sst2" / "validation.jsonl", sentences(6, 0, "val"))
    with pytest.raises(ValueError) as err:
        load(str(tmp_path))
    message = str(err.value)
    assert "'sst2'" in message and "test side" in message
    assert "{'0': 0, '1': 6}" in message


def test_unknown_task_lists_valid_choices(sst2_mirror):
    with pytest.raises(ValueError, match="'nope'.*anthropic_hh, boolq"):
        load(sst2_mirror, name="nope")


def test_mirror_without_the_task_is_a_clear_error(sst2_mirror):
    with pytest.raises(FileNotFoundError, match=r"amazon_polarity.*holds: sst2"):
        load(sst2_mirror, name="amazon_polarity")


def test_request_beyond_the_pool_takes_all_and_says_so(sst2_mirror):
    prov = load(sst2_mirror, n_train=1000).provenance
    assert prov["train"]["n_requested"] == 1000
    assert prov["train"]["n_used"] == 40
    with pytest.raises(ValueError, match="n_test"):
        load(sst2_mirror, n_test=0)


def test_provenance_is_json_serialisable(cr_mirror):
    prov = load(cr_mirror, name="cr", n_train=8, n_test=4).provenance
    assert json.loads(json.dumps(prov)) == prov


@pytest.mark.parametrize("n", [0, 1, 7, 10])
def test_split_halves_disjoint_and_covering(n):
    a, b = splits.split_halves(n, seed=3)
    assert (len(a), len(b)) == (n // 2, n - n // 2)
    assert not set(a) & set(b)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(n))


def test_split_halves_seeded():
    a1, _ = splits.split_halves(100, seed=0)
    a2, _ = splits.split_halves(100, seed=0)
    a3, _ = splits.split_halves(100, seed=1)
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)


@pytest.mark.parametrize("name", ["sciq", "sst2", "cr", "anthropic_hh"])
def test_real_data(name):
    # The mirror when W2S_DATA_DIR is set; otherwise the hub, so that an
    # unset variable shows up as a hub failure rather than a silent skip.
    data_dir = sources.resolve_data_dir(None)
    data = load(data_dir, name=name, n_train=40, n_test=20)
    assert counts(data.train_labels) == [20, 20]
    assert counts(data.test_labels) == [10, 10]
    assert len(data.train_texts) == 40 and len(data.test_texts) == 20
    prov = data.provenance
    assert prov["source"] == ("mirror" if os.environ.get(
        sources.DATA_DIR_ENV) else "hub")
    for side in ("train", "test"):
        before = prov[side]["class_counts_balanced"]
        assert before["0"] == before["1"] > 0
