"""The task registry: where each dataset lives, how its rows become binary
examples, and which rows belong together.

Every formatter takes one raw row with the hub's field names (the local
mirror keeps the same names) and returns a `(text, label)` pair with label
in {0, 1}, or None for a row it cannot use. Formatters that need a coin draw
it from the `numpy.random.Generator` they are given, a fixed number of draws
per row, so that one row's coins do not depend on which branch an earlier
row took. Each task's `Grouping` joins rows that share text (a story, a
passage, a prompt), so that no split puts such rows on both sides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Optional, Sequence

import numpy as np

Example = tuple[str, int]
RowFormatter = Callable[[dict, np.random.Generator], Optional[Example]]


@dataclass(frozen=True)
class Grouping:
    """Which raw rows belong together and must land on one side of a split.

    `keys(row)` gives the row's keys; rows that share any key, directly or
    through a chain of rows, form one group, so a grouping can join rows by
    more than one field (or by overlapping text). A row with no keys, and
    every row when `keys` is None, is a group of its own. `name` is what
    provenance records.
    """
    name: str
    keys: Optional[Callable[[dict], Iterable[Hashable]]] = None

    def assign(self, rows: Sequence[dict]) -> np.ndarray:
        """A group id per row (int64), numbered 0, 1, ... in the order of
        each group's first row; with `keys` None that is simply 0..n-1."""
        n = len(rows)
        if self.keys is None:
            return np.arange(n, dtype=np.int64)
        parent = list(range(n))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        first_row: dict = {}
        for i, row in enumerate(rows):
            for key in self.keys(row):
                j = first_row.setdefault(key, i)
                if j != i:
                    a, b = root(i), root(j)
                    # The lower row becomes the root, so a group's root is
                    # its first row.
                    parent[max(a, b)] = min(a, b)
        ids: dict[int, int] = {}
        return np.asarray([ids.setdefault(root(i), len(ids)) for i in range(n)],
                          dtype=np.int64)


# Each row its own group.
ROW = Grouping("row")


@dataclass(frozen=True)
class TaskSpec:
    name: str  # registry key, and the task's directory name in a mirror
    hub_id: str
    hub_config: str | None
    hub_data_dir: str | None
    train_split: str
    test_split: str
    # (row, rng) -> (text, label), or None for a row it cannot use.
    format_row: RowFormatter
    # Rows of one group never straddle a carved train/test split, nor the
    # halves A/B of the train pool.
    grouping: Grouping = ROW

    def format_rows_indexed(self, rows: Iterable[dict], rng: np.random.Generator
                            ) -> tuple[list[Example], np.ndarray]:
        """The examples of `rows` and, aligned with them, the index of the
        row each came from (rows it cannot use are skipped)."""
        examples, sources = [], []
        for i, row in enumerate(rows):
            example = self.format_row(row, rng)
            if example is not None:
                examples.append(example)
                sources.append(i)
        return examples, np.asarray(sources, dtype=np.int64)

    def format_rows(self, rows: Iterable[dict],
                    rng: np.random.Generator) -> list[Example]:
        """(rows, rng) -> list of (text, label); rows it cannot use are
        skipped."""
        return self.format_rows_indexed(rows, rng)[0]


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


# ---- groupings: which rows share text that a model could memorise ----

def _normalise(text: str) -> str:
    """Case, punctuation and spacing folded away, so that copies differing
    only in those still share a key."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _field_keys(*fields: str) -> Callable[[dict], list[str]]:
    """One key per named field, normalised; rows sharing any one of them
    are joined. Empty values give no key."""
    def keys(row: dict) -> list[str]:
        values = (_normalise(str(row[field] or "")) for field in fields)
        return [f"{field}:{value}" for field, value in zip(fields, values)
                if value]
    return keys


# BoolQ's dev split holds versions of one Wikipedia paragraph that differ by
# a character or by a dropped sentence, so equal passages are not enough: a
# passage is keyed by its opening and by each of its longer sentences.
_PASSAGE_OPENING = 100
_PASSAGE_SENTENCE_MIN = 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _passage_keys(row: dict) -> list[str]:
    text = _normalise(row["passage"])
    keys = [f"opening:{text[:_PASSAGE_OPENING]}"] if text else []
    for sentence in _SENTENCE_END.split(row["passage"]):
        sentence = _normalise(sentence)
        if len(sentence) >= _PASSAGE_SENTENCE_MIN:
            keys.append(f"sentence:{sentence}")
    return keys


def _hh_first_turn_keys(row: dict) -> list[str]:
    """The human's opening turn: rows sharing it are rollouts of one prompt."""
    turns = _hh_turns(row["chosen"])
    first = _normalise(turns[0]) if turns else ""
    return [f"first_turn:{first}"] if first else []


def _amazon_keys(row: dict) -> list[str]:
    text = _normalise(f"{row['title']} {row['content']}")
    return [f"text:{text}"] if text else []


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    # A question can recur in SciQ (70 repeats in train); the support text
    # is not shown, so it does not join rows.
    TaskSpec("sciq", "allenai/sciq", None, None, "train", "test", _sciq,
             Grouping("question", _field_keys("question"))),
    TaskSpec("boolq", "google/boolq", None, None, "train", "validation",
             _boolq, Grouping("passage_overlap", _passage_keys)),
    # Up to four questions share one story, and the story is most of the
    # text: group by context, not by (context, question).
    TaskSpec("cosmos_qa", "allenai/cosmos_qa", None, None, "train",
             "validation", _cosmos_qa,
             Grouping("context", _field_keys("context"))),
    TaskSpec("anthropic_hh", "Anthropic/hh-rlhf", None, "harmless-base",
             "train", "test", _anthropic_hh,
             Grouping("first_human_turn", _hh_first_turn_keys)),
    TaskSpec("amazon_polarity", "fancyzhx/amazon_polarity", None, None,
             "train", "test", _amazon_polarity,
             Grouping("text", _amazon_keys)),
    # GLUE hides its test labels, so the validation split is the test set.
    # Row grouping on purpose: SST-2's train split repeats a few sentences,
    # but its halves A/B must stay those of the published quickstart.
    TaskSpec("sst2", "nyu-mll/glue", "sst2", None, "train", "validation",
             _sentence, ROW),
    TaskSpec("ethics_justice", "hendrycks/ethics", "justice", None, "train",
             "test", _ethics_justice,
             Grouping("scenario", _field_keys("scenario"))),
    # One baseline scenario is paired with several others and vice versa:
    # rows sharing either scenario are joined.
    TaskSpec("ethics_utilitarianism", "hendrycks/ethics", "utilitarianism",
             None, "train", "test", _ethics_utilitarianism,
             Grouping("either_scenario",
                      _field_keys("baseline", "less_pleasant"))),
    TaskSpec("cr", "SetFit/CR", None, None, "train", "test", _text,
             Grouping("text", _field_keys("text"))),
)}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: "
                         f"{', '.join(task_names())}")
    return TASKS[name]
