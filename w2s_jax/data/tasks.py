"""The task registry: where each dataset lives and how its rows become
binary examples.

Every formatter takes raw rows with the hub's field names (the local mirror
keeps the same names) and returns `(text, label)` pairs with label in {0, 1}.
Formatters that need a coin draw it from the `numpy.random.Generator` they
are given, a fixed number of draws per row, so that one row's coins do not
depend on which branch an earlier row took.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np

Example = tuple[str, int]
RowFormatter = Callable[[dict, np.random.Generator], Optional[Example]]


@dataclass(frozen=True)
class TaskSpec:
    name: str  # registry key, and the task's directory name in a mirror
    hub_id: str
    hub_config: str | None
    hub_data_dir: str | None
    train_split: str
    test_split: str
    # (rows, rng) -> list of (text, label); rows it cannot use are skipped.
    format_rows: Callable[[Iterable[dict], np.random.Generator], list[Example]]


def _rowwise(format_row: RowFormatter):
    """Lift a one-row formatter (None = skip the row) to a list of rows."""
    def format_rows(rows: Iterable[dict], rng: np.random.Generator) -> list[Example]:
        examples = (format_row(row, rng) for row in rows)
        return [example for example in examples if example is not None]
    return format_rows


def _coin(rng: np.random.Generator) -> bool:
    return bool(rng.random() < 0.5)


def _sciq(row: dict, rng: np.random.Generator) -> Example:
    show_correct = _coin(rng)
    distractor = row[f"distractor{int(rng.integers(1, 4))}"]
    answer = row["correct_answer"] if show_correct else distractor
    return f"Q: {row['question']} A: {answer}", int(show_correct)


def _boolq(row: dict, rng: np.random.Generator) -> Example:
    return f"Passage: {row['passage']}\nQuestion: {row['question']}", int(row["answer"])


# CosmosQA marks "no candidate is right" with this answer text; shown as a
# candidate it is not a meaningful positive, so such items only yield
# negatives (a wrong candidate, which is indeed wrong).
_COSMOS_NONE = "None of the above choices"


def _cosmos_qa(row: dict, rng: np.random.Generator) -> Example | None:
    true_answer = row[f"answer{int(row['label'])}"]
    # Compare texts, not indices: a candidate duplicating the true answer's
    # text must not be shown as a wrong answer.
    others = [row[f"answer{i}"] for i in range(4)
              if row[f"answer{i}"] != true_answer]
    show_true = _coin(rng) and _COSMOS_NONE not in true_answer
    pick = rng.random()
    if show_true:
        answer, label = true_answer, 1
    elif others:
        answer, label = others[int(pick * len(others))], 0
    else:
        return None
    return (f"Context: {row['context']}\nQuestion: {row['question']}\n"
            f"Answer: {answer}", label)


def _amazon_polarity(row: dict, rng: np.random.Generator) -> Example:
    return f"{row['title']} {row['content']}", int(row["label"])


def _sentence(row: dict, rng: np.random.Generator) -> Example:
    return row["sentence"], int(row["label"])


def _text(row: dict, rng: np.random.Generator) -> Example:
    return row["text"], int(row["label"])


def _ethics_justice(row: dict, rng: np.random.Generator) -> Example:
    return (f"Is the following a reasonable justification?\n"
            f"{row['scenario']}\nA:", int(row["label"]))


def _ethics_utilitarianism(row: dict, rng: np.random.Generator) -> Example:
    better_first = _coin(rng)
    answer = 1 if _coin(rng) else 2
    first, second = ((row["baseline"], row["less_pleasant"]) if better_first
                     else (row["less_pleasant"], row["baseline"]))
    better_number = 1 if better_first else 2
    return (f"Which is more pleasant?\n1) {first}\n2) {second}\nA: {answer}",
            int(answer == better_number))


_HH_TURN = re.compile(r"(?=\n\nHuman:|\n\nAssistant:)")
_HH_ASSISTANT = "\n\nAssistant:"


def _hh_turns(transcript: str) -> list[str]:
    return [turn for turn in _HH_TURN.split(transcript) if turn]


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(shared conversation, chosen reply, rejected reply), or None.

    The two transcripts share every turn up to the final "\\n\\nAssistant:";
    the split point is their longest common prefix of whole turns, backed
    off to the last turn where both go on with an Assistant reply (so each
    reply starts at an Assistant turn). The marker of that turn is dropped:
    the prompt labels the replies itself. None when there is no such point.
    """
    chosen_turns, rejected_turns = _hh_turns(chosen), _hh_turns(rejected)
    common = 0
    while (common < min(len(chosen_turns), len(rejected_turns))
           and chosen_turns[common] == rejected_turns[common]):
        common += 1
    for split in range(common, -1, -1):
        if (split < len(chosen_turns) and split < len(rejected_turns)
                and chosen_turns[split].startswith(_HH_ASSISTANT)
                and rejected_turns[split].startswith(_HH_ASSISTANT)):
            conversation = "".join(chosen_turns[:split]).lstrip()
            replies = ["".join(turns[split:])[len(_HH_ASSISTANT):]
                       for turns in (chosen_turns, rejected_turns)]
            return conversation, replies[0], replies[1]
    return None


def _anthropic_hh(row: dict, rng: np.random.Generator) -> Example | None:
    # The release's single-transcript format stays at chance for every
    # model (w2s_facts.md section 5): the preference is only visible when
    # both replies are side by side.
    chosen_first = _coin(rng)
    if row["chosen"] == row["rejected"]:
        return None
    parts = split_hh_pair(row["chosen"], row["rejected"])
    if parts is None:
        return None
    conversation, chosen, rejected = parts
    a, b = (chosen, rejected) if chosen_first else (rejected, chosen)
    return (f"{conversation}\n\nResponse A:{a}\n\nResponse B:{b}\n\n"
            f"Is Response A better than Response B?", int(chosen_first))


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("sciq", "allenai/sciq", None, None, "train", "test",
             _rowwise(_sciq)),
    TaskSpec("boolq", "google/boolq", None, None, "train", "validation",
             _rowwise(_boolq)),
    TaskSpec("cosmos_qa", "allenai/cosmos_qa", None, None, "train",
             "validation", _rowwise(_cosmos_qa)),
    TaskSpec("anthropic_hh", "Anthropic/hh-rlhf", None, "harmless-base",
             "train", "test", _rowwise(_anthropic_hh)),
    TaskSpec("amazon_polarity", "fancyzhx/amazon_polarity", None, None,
             "train", "test", _rowwise(_amazon_polarity)),
    # GLUE hides its test labels, so the validation split is the test set.
    TaskSpec("sst2", "nyu-mll/glue", "sst2", None, "train", "validation",
             _rowwise(_sentence)),
    TaskSpec("ethics_justice", "hendrycks/ethics", "justice", None, "train",
             "test", _rowwise(_ethics_justice)),
    TaskSpec("ethics_utilitarianism", "hendrycks/ethics", "utilitarianism",
             None, "train", "test", _rowwise(_ethics_utilitarianism)),
    TaskSpec("cr", "SetFit/CR", None, None, "train", "test", _rowwise(_text)),
)}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: "
                         f"{', '.join(task_names())}")
    return TASKS[name]
