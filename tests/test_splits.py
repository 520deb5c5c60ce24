"""load_task and its steps: carve-out, balancing, selection, halves."""
import json
import os

import numpy as np
import pytest

from w2s_jax.data import sources, splits, tasks


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


def test_request_beyond_the_pool_takes_all_and_says_so(sst2_mirror, caplog,
                                                      monkeypatch):
    monkeypatch.setattr(splits, "_WARNED_SHORT", set())
    with caplog.at_level("WARNING", logger="w2s_jax.data.splits"):
        prov = load(sst2_mirror, n_train=1000).provenance
        load(sst2_mirror, n_train=1000, seed=1)  # a sweep's next seed
    assert prov["train"]["n_requested"] == 1000
    assert prov["train"]["n_used"] == 40
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["task sst2: the train side has 40 examples after class "
                        "balancing, fewer than config.n_train=1000; using all "
                        "40 (the results record both as n_requested and "
                        "n_used)"]
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


# ---- groups: related rows never straddle a split ----

def _halves_before_groups(n, seed):
    """split_halves as it was before groups existed (the quickstart's
    published halves depend on it), copied verbatim as the reference."""
    order = np.random.default_rng([seed, splits.stable_hash("halves")]).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _carve_before_groups(rows, task_name,
                         test_fraction=splits.CARVE_TEST_FRACTION):
    """carve's row split as it was before groups existed."""
    seed = splits.stable_hash(f"carve/{task_name}")
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = int(round(len(rows) * test_fraction))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return [rows[i] for i in train_idx], [rows[i] for i in test_idx]


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 101, 4000])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_split_halves_singleton_groups_reproduce_the_old_halves(n, seed):
    old_a, old_b = _halves_before_groups(n, seed)
    rng = np.random.default_rng(7)
    for groups in (None, np.arange(n), rng.permutation(n) * 3 + 5,
                   [f"g{i}" for i in rng.permutation(n)]):
        a, b = splits.split_halves(n, seed, groups=groups)
        for new, old in ((a, old_a), (b, old_b)):
            np.testing.assert_array_equal(new, old)
            assert new.dtype == old.dtype
    a, b = splits.split_halves(n, seed)
    np.testing.assert_array_equal(a, old_a)
    np.testing.assert_array_equal(b, old_b)


def test_split_halves_keeps_groups_whole():
    # 300 examples in groups of 1 to 6, labels interleaved across the pool.
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(np.arange(100), rng.integers(1, 7, 100)))
    n = len(groups)
    for seed in range(5):
        a, b = splits.split_halves(n, seed, groups=groups)
        assert not set(groups[a]) & set(groups[b])
        assert sorted(np.concatenate([a, b]).tolist()) == list(range(n))
        assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)
        assert abs(len(a) - n // 2) <= 3  # within half the largest group
    again = splits.split_halves(n, 0, groups=groups)
    np.testing.assert_array_equal(again[0], splits.split_halves(n, 0, groups)[0])
    with pytest.raises(ValueError, match="group labels"):
        splits.split_halves(n + 1, 0, groups=groups)


def test_grouping_joins_rows_sharing_any_key_transitively():
    grouping = tasks.Grouping("a_or_b", lambda row: [k for k in (
        row.get("a") and "a" + row["a"], row.get("b") and "b" + row["b"]) if k])
    rows = [{"a": "x"}, {"a": "y"}, {"a": "x", "b": "1"}, {"b": "1"},
            {}, {"a": "y", "b": "2"}, {}]
    # Rows 0, 2, 3 share a or b; 1 and 5 share a; keyless rows stand alone.
    assert grouping.assign(rows).tolist() == [0, 1, 0, 0, 2, 1, 3]
    assert tasks.ROW.assign(rows).tolist() == list(range(7))


def test_carve_with_one_row_per_group_is_the_old_row_split():
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(137)]
    train, test, info = splits.carve(rows, "cr", grouping=tasks.ROW)
    assert (train, test) == _carve_before_groups(rows, "cr")
    assert info["grouping"] == "row" and info["groups"] == 137


COSMOS_STORIES = 60


@pytest.fixture
def cosmos_mirror(tmp_path):
    """cosmos_qa with only its validation split: 1 to 4 questions per story,
    the rows of one story scattered through the file as in the real one."""
    rng = np.random.default_rng(0)
    rows = []
    for story in range(COSMOS_STORIES):
        for q in range(int(rng.integers(1, 5))):
            rows.append({"id": f"{story}-{q}", "context": f"Story {story}.",
                         "question": f"Question {q} about {story}?",
                         "answer0": f"a{story}-{q}", "answer1": "b",
                         "answer2": "c", "answer3": "d", "label": 0})
    rows = [rows[i] for i in rng.permutation(len(rows))]
    write_jsonl(tmp_path / "cosmos_qa" / "validation.jsonl", rows)
    return str(tmp_path), rows


def _context(text):
    return text.split("\nQuestion:")[0]


def test_carve_keeps_groups_whole(cosmos_mirror):
    _, rows = cosmos_mirror
    grouping = tasks.get_task("cosmos_qa").grouping
    train, test, info = splits.carve(rows, "cosmos_qa", grouping=grouping)
    assert not {r["context"] for r in train} & {r["context"] for r in test}
    assert sorted(map(str, train + test)) == sorted(map(str, rows))
    assert abs(len(test) - round(0.2 * len(rows))) <= 2
    assert info["grouping"] == "context"
    assert info["groups"] == COSMOS_STORIES
    assert info["groups_train"] + info["groups_test"] == COSMOS_STORIES
    assert (info["rows_train"], info["rows_test"]) == (len(train), len(test))


def test_load_task_carves_by_group_and_gives_train_groups(cosmos_mirror):
    data_dir, rows = cosmos_mirror
    data = load(data_dir, name="cosmos_qa", balance=False)
    train_contexts = [_context(t) for t in data.train_texts]
    assert not set(train_contexts) & {_context(t) for t in data.test_texts}
    prov = data.provenance
    assert prov["grouping"] == "context" == prov["carve_out"]["grouping"]
    assert prov["train"]["grouping"] == "context"
    # train_groups follow train_texts: one id per story.
    assert data.train_groups.dtype == np.int64
    assert len(data.train_groups) == len(data.train_texts)
    by_id = {}
    for group, context in zip(data.train_groups.tolist(), train_contexts):
        assert by_id.setdefault(group, context) == context
    assert len(by_id) == len(set(train_contexts)) == prov["train"]["groups_used"]
    a, b = splits.split_halves(len(data.train_texts), 0, data.train_groups)
    assert not {train_contexts[i] for i in a} & {train_contexts[i] for i in b}


def test_train_groups_of_a_row_grouped_task_are_singletons(sst2_mirror):
    data = load(sst2_mirror, n_train=30)
    assert len(np.unique(data.train_groups)) == len(data.train_texts) == 30
    a, b = splits.split_halves(30, 4, groups=data.train_groups)
    old_a, old_b = _halves_before_groups(30, 4)
    np.testing.assert_array_equal(a, old_a)
    np.testing.assert_array_equal(b, old_b)


# What each task shows of a group's shared text, read back from its examples.
SHARED_TEXT = {
    "cosmos_qa": _context,
    "boolq": lambda text: text.split("\nQuestion:")[0],
    "anthropic_hh": lambda text: text.split("\n\nAssistant:")[0].split(
        "\n\nResponse A:")[0],
}


@pytest.mark.parametrize("name", ["cosmos_qa", "boolq", "anthropic_hh"])
def test_real_carve_out_shares_no_group_between_train_and_test(name):
    data_dir = os.environ.get(sources.DATA_DIR_ENV)
    if not data_dir:
        pytest.skip(f"{sources.DATA_DIR_ENV} is unset: no local mirror")
    spec = tasks.get_task(name)
    split = splits.plan_splits(spec, data_dir)["carve_out"]["from_split"]
    rows = sources.load_raw(spec, split, data_dir)
    ids = spec.grouping.assign(rows)
    group_of = {id(row): g for row, g in zip(rows, ids.tolist())}
    train, test, info = splits.carve(rows, name, grouping=spec.grouping)
    train_groups = {group_of[id(row)] for row in train}
    assert not [row for row in test if group_of[id(row)] in train_groups]
    assert info["groups"] < len(rows)  # the task's rows really do group
    assert abs(info["rows_test"] - 0.2 * len(rows)) <= 5
    # And in the examples: no identical text, no shared story / passage /
    # opening prompt.
    data = load(data_dir, name=name)
    assert not set(data.train_texts) & set(data.test_texts)
    shared = SHARED_TEXT[name]
    train_shared = {shared(t) for t in data.train_texts}
    assert not [t for t in data.test_texts if shared(t) in train_shared]
    assert data.provenance["carve_out"]["grouping"] == spec.grouping.name
