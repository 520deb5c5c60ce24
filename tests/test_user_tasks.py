"""A researcher's own file as a task: JSONL, CSV and Parquet read the same
examples, the pair and multiple-choice layouts format as documented, a run
goes end to end, and a bad file is named by file, line and field."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_recipes import WORDS, _bow, _frozen, _stage
from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.core.errors import DataError
from w2s_jax.data import splits, user_tasks

FIELDS = {"text": "review", "label": "stars", "text_pair": "", "choices": "",
          "group": ""}


def _rows(n=240):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        rows.append({"review": f"a {WORDS[label][i % 4]} film number {i}",
                     "stars": label, "shop": f"s{i % 30}"})
    return rows


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _load(path, **fields):
    return splits.load_task(f"file:{path}", data_dir=None, seed=0, n_train=None,
                            n_test=None, task_fields={**FIELDS, **fields})


def test_the_three_formats_give_the_same_examples(tmp_path):
    rows = _rows()
    loaded = [_load(_write(tmp_path / f"reviews{ext}", rows))
              for ext in (".jsonl", ".csv", ".parquet")]
    for data in loaded[1:]:
        assert data.train_texts == loaded[0].train_texts
        assert data.test_texts == loaded[0].test_texts
        np.testing.assert_array_equal(data.train_labels, loaded[0].train_labels)
    data = loaded[0]
    # Every example is a row's text with that row's label.
    by_text = {r["review"]: r["stars"] for r in rows}
    for texts, labels in ((data.train_texts, data.train_labels),
                          (data.test_texts, data.test_labels)):
        assert [by_text[t] for t in texts] == labels.tolist()
    assert not set(data.train_texts) & set(data.test_texts)
    assert data.provenance["source"] == "file"
    assert len(data.provenance["sha256"]) == 64


def test_groups_never_straddle_the_carve(tmp_path):
    rows = _rows()
    data = _load(_write(tmp_path / "r.jsonl", rows), group="shop")
    shop = {r["review"]: r["shop"] for r in rows}
    assert not ({shop[t] for t in data.train_texts}
                & {shop[t] for t in data.test_texts})


def test_pair_and_multiple_choice_layouts(tmp_path):
    pairs = [{"a": f"first {i}", "b": f"second {i}", "y": (i * 7 // 3) % 2}
             for i in range(200)]
    data = _load(_write(tmp_path / "p.jsonl", pairs), text="a", text_pair="b",
                 label="y")
    for text, label in zip(data.train_texts + data.test_texts,
                           np.concatenate([data.train_labels, data.test_labels])):
        i = int(text.split(" ")[1].split("\n")[0])
        assert (text, label) == (f"first {i}\n\nsecond {i}", pairs[i]["y"])
    items = [{"q": f"question {i}", "options": [f"x{i}", f"y{i}", f"z{i}"],
              "right": i % 3} for i in range(200)]
    data = _load(_write(tmp_path / "mc.jsonl", items), text="q", choices="options",
                 label="right")
    for text, label in zip(data.train_texts + data.test_texts,
                           np.concatenate([data.train_labels, data.test_labels])):
        i = int(text.split(" ")[2])
        right = items[i]["options"][items[i]["right"]]
        shown = text.split(" A: ")[1]
        assert text == f"Q: question {i} A: {shown}"
        assert (shown == right) == bool(label)


def test_a_file_task_runs_end_to_end(tmp_path):
    path = _write(tmp_path / "reviews.csv", _rows(400))
    config = config_lib.base_config()
    config.task = f"file:{path}"
    config.task_fields.update(FIELDS)
    config.n_train, config.n_test, config.max_ctx = 256, 64, 32
    config.weak, config.strong = _bow(), _frozen()
    config.train.epochs, config.train.log_every = 2, 100
    results = run.run(config, str(tmp_path / "work"))
    _, arrays = _stage(str(tmp_path / "work"), results, "weak")
    data = splits.load_task(config.task, data_dir=None, seed=0, n_train=256,
                            n_test=64, task_fields=FIELDS)
    # The test accuracy is the weak stage's stored predictions on the file's
    # own test examples (the words decide the label: bow-tfidf learns it).
    acc = np.mean(arrays["test_probs"].argmax(-1) == data.test_labels)
    assert results["gold_test"]["weak"]["accuracy"] == pytest.approx(acc)
    assert acc > 0.9
    assert results["data"]["location"] == os.path.abspath(path)


@pytest.mark.parametrize("content, fields, fragments", [
    ('{"review": "fine", "stars": 1}\n{"review": "bad"}\n', {},
     ["bad.jsonl, line 2", "no field 'stars'", "task_fields.label"]),
    ('{"review": "fine", "stars": 1}\n{"review": "x", "stars": 1\n', {},
     ["bad.jsonl, line 2", "not valid JSON"]),
    ('{"review": "fine", "stars": 1}\n{"review": "x", "stars": "maybe"}\n', {},
     ["bad.jsonl, line 2", "'maybe'", "0 or 1"]),
    ('{"review": "", "stars": 1}\n', {}, ["line 1", "'review'", "non-empty"]),
    ('{"review": "a", "stars": 1}\n{"review": "b", "stars": 1}\n', {},
     ["every row has label 1", "both classes"]),
    ('{"q": "a", "options": ["x", "y"], "right": 2}\n',
     {"text": "q", "choices": "options", "label": "right"},
     ["line 1", "'right'", "0 to 1"]),
])
def test_bad_rows_are_named(tmp_path, content, fields, fragments):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        user_tasks.checked_rows(str(path), {**FIELDS, **fields})
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_bad_file_from_the_command_line(tmp_path):
    """One error line, exit status 1, no traceback, nothing written."""
    path = tmp_path / "bad.csv"
    path.write_text("review,stars\ngood film,1\nbad film,\n")
    missing = tmp_path / "absent.jsonl"
    for task, fragment in ((path, f"{path}, line 3"),
                           (missing, f"{missing} does not exist"),
                           (tmp_path / "data.txt", ".jsonl, .csv, .parquet")):
        work = tmp_path / "work"
        proc = subprocess.run(
            [sys.executable, "-m", "w2s_jax.main", "--config=configs/smoke.py",
             f"--workdir={work}", f"--config.task=file:{task}",
             "--config.task_fields.text=review",
             "--config.task_fields.label=stars"],
            capture_output=True, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert fragment in proc.stderr, proc.stderr
        assert not work.exists()


def test_a_three_way_file_task(tmp_path):
    """task_fields.num_classes=3: labels 0..2, balanced over all three; a
    label outside them is named."""
    rows = [{"review": f"{['bad', 'plain', 'good'][i % 3]} film {i}",
             "stars": (i % 3 + (i % 7 == 0)) % 3} for i in range(300)]
    path = _write(tmp_path / "three.jsonl", rows)
    data = _load(path, num_classes=3)
    by_text = {r["review"]: r["stars"] for r in rows}
    assert [by_text[t] for t in data.train_texts] == data.train_labels.tolist()
    for labels in (data.train_labels, data.test_labels):
        counts = np.bincount(labels, minlength=3)
        assert counts.min() == counts.max() > 0
    bad = tmp_path / "bad3.jsonl"
    bad.write_text('{"review": "a", "stars": 1}\n{"review": "b", "stars": 3}\n')
    with pytest.raises(DataError, match=r"line 2.*3.*0 to 2"):
        user_tasks.checked_rows(str(bad), {**FIELDS, "num_classes": 3})
