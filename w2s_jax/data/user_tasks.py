"""A researcher's own dataset, from one local file, with no code.

`--config.task=file:path/to/data.jsonl` (or .csv, .parquet) names the file;
`config.task_fields` names its columns (w2s_jax/config.py):

- `text` and `label`: one text per row, label 0/1 (or true/false), or
  0..K-1 with `num_classes` K (a k-way task);
- plus `text_pair`: two texts per row (premise and hypothesis, two
  sentences), shown as "<text>\\n\\n<text_pair>";
- `choices` instead of a label-per-text: a multiple-choice layout, `text`
  the question, `choices` the list of candidates and `label` the index of
  the right one; each row becomes one binary example "Q: <question> A:
  <candidate>", the right candidate or a random other one by a seeded coin
  (as the paper turns multiple-choice items into binary examples);
- `group` (optional): rows sharing its value never straddle the train/test
  carve or the halves A/B (e.g. a passage id).

The file is one split: the train pool and the test set are carved from it,
whole groups to a side, as for a mirror that holds one split. Every row is
checked before anything runs; a bad one is named by file, line and field.

TFDS tasks (data/tfds_tasks.py) share the layouts, checks and messages: a
row is a dict of its fields plus WHERE, its place in its source (e.g.
"data.jsonl, line 3"), which messages about it start with.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np

from w2s_jax.core.errors import DataError, DataFileNotFound
from w2s_jax.data.tasks import ROW, Example, Grouping, TaskSpec

PREFIX = "file:"
FORMATS = (".jsonl", ".csv", ".parquet")
LABEL_WORDS = {"0": 0, "1": 1, "false": 0, "true": 1}
WHERE = "__where__"


def is_file_task(name: str) -> bool:
    return name.startswith(PREFIX)


def path_of(name: str) -> str:
    return name[len(PREFIX):]


def check_name(name: str) -> None:
    """The file exists and has a known extension (DataFileNotFound/DataError)."""
    path = path_of(name)
    if not path.endswith(FORMATS):
        raise DataError(f"config.task={name!r}: {path!r} is not a "
                        f"{', '.join(FORMATS)} file")
    if not os.path.isfile(path):
        raise DataFileNotFound(f"config.task={name!r}: {path} does not exist")


def read_rows(path: str) -> list[dict]:
    """The file's rows as dicts, in order; a line that does not parse is
    named."""
    if path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {line_no}: not valid JSON "
                                    f"({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {line_no}: a JSON "
                                    f"{type(row).__name__}, not an object")
                rows.append({**row, WHERE: f"{path}, line {line_no}"})
        return rows
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            # Line 1 is the header, so data rows start on line 2.
            return [{**row, WHERE: f"{path}, line {line_no}"}
                    for line_no, row in enumerate(csv.DictReader(f), start=2)]
    import pyarrow.parquet as pq  # a dependency of `datasets`
    table = pq.read_table(path).to_pylist()
    # Parquet has no lines: a row is named by its position, from 1.
    return [{**row, WHERE: f"{path}, line {i}"}
            for i, row in enumerate(table, start=1)]


def spec_for(name: str, fields: dict) -> TaskSpec:
    """A TaskSpec reading the file's rows with `fields` (config.task_fields)."""
    path = path_of(name)
    stem = os.path.splitext(os.path.basename(path))[0]
    return layout_spec(f"file-{stem}", path, "file", fields)


def layout_spec(task_name: str, location: str, split: str,
                fields: dict) -> TaskSpec:
    """A TaskSpec formatting rows with `fields` (config.task_fields)."""
    grouping = (Grouping(f"column {fields['group']}",
                         lambda row: [str(row[fields["group"]])])
                if fields.get("group") else ROW)
    return TaskSpec(task_name, location, None, None, split, split,
                    lambda row, rng: format_row(row, rng, fields),
                    grouping, num_classes=_num_classes(fields))


def checked_rows(path: str, fields: dict) -> list[dict]:
    """The file's rows, each checked (check_rows)."""
    rows = read_rows(path)
    check_rows(path, rows, fields)
    return rows


def check_rows(source: str, rows: list[dict], fields: dict) -> None:
    """Every row has the fields the layout needs, with usable values;
    `source` names the rows' file (or split) in messages."""
    if not rows:
        raise DataError(f"{source} holds no rows")
    rng = np.random.default_rng(0)
    for row in rows:
        format_row(row, rng, fields)
    labels = {_label(row, fields) for row in rows
              if not fields.get("choices")}
    if labels and len(labels) < 2:
        raise DataError(f"{source}: every row has label {labels.pop()} in "
                        f"column {fields['label']!r}; a task needs both "
                        f"classes")


def provenance(path: str) -> dict:
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"source": "file", "location": os.path.abspath(path),
            "sha256": digest}


def format_row(row: dict, rng: np.random.Generator, fields: dict) -> Example:
    if fields.get("choices"):
        # Two draws per row whatever the coin says (module docstring of tasks).
        show_right, pick = rng.random() < 0.5, rng.random()
        question = _text(row, fields["text"], fields)
        choices = _field(row, fields["choices"], fields)
        if not isinstance(choices, list) or len(choices) < 2 or not all(
                isinstance(c, str) for c in choices):
            raise DataError(f"{row[WHERE]}: field {fields['choices']!r} "
                            f"must be a list of at least 2 strings, got "
                            f"{choices!r}")
        right = _choice_index(row, fields, len(choices))
        others = [c for i, c in enumerate(choices) if i != right]
        answer = (choices[right] if show_right
                  else others[int(pick * len(others))])
        return f"Q: {question} A: {answer}", int(show_right)
    text = _text(row, fields["text"], fields)
    if fields.get("text_pair"):
        text = f"{text}\n\n{_text(row, fields['text_pair'], fields)}"
    return text, _label(row, fields)


def _field(row: dict, column: str, fields: dict):
    if column not in row:
        present = sorted(k for k in row if k != WHERE)
        setting = next(k for k, v in fields.items() if v == column)
        raise DataError(f"{row[WHERE]}: no field {column!r} (config."
                        f"task_fields.{setting}); the row has: "
                        f"{', '.join(present)}; set "
                        f"--config.task_fields.{setting}=<column>")
    return row[column]


def _text(row, column, fields) -> str:
    value = _field(row, column, fields)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{row[WHERE]}: field {column!r} must be "
                        f"non-empty text, got {value!r}")
    return value


def _num_classes(fields: dict) -> int:
    return int(fields.get("num_classes") or 2)


def _label(row, fields) -> int:
    value = _field(row, fields["label"], fields)
    word = str(value).strip().lower()
    if isinstance(value, float) and value.is_integer():
        word = str(int(value))
    k = _num_classes(fields)
    words = LABEL_WORDS if k == 2 else {str(c): c for c in range(k)}
    if word not in words:
        allowed = ("0 or 1 (or true/false)" if k == 2 else
                   f"an integer from 0 to {k - 1} (config.task_fields."
                   f"num_classes={k})")
        raise DataError(f"{row[WHERE]}: label field "
                        f"{fields['label']!r} is {value!r}; a label must be "
                        f"{allowed}")
    return words[word]


def _choice_index(row, fields, n: int) -> int:
    value = _field(row, fields["label"], fields)
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if str(value).strip() != str(index) or not 0 <= index < n:
        raise DataError(f"{row[WHERE]}: label field "
                        f"{fields['label']!r} is {value!r}; with "
                        f"config.task_fields.choices it must be the index "
                        f"(0 to {n - 1}) of the right choice")
    return index
