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
    # row -> the row's difficulty level (a field the dataset ships, e.g.
    # a question type), or None: results split test accuracy by it.
    difficulty: Optional[Callable[[dict], Optional[str]]] = None
    # Labels are 0..num_classes-1; the paper's tasks are binary.
    num_classes: int = 2
    # The task's directory in a local mirror when it is not `name` (a
    # variant of another task reads that task's files).
    mirror_name: Optional[str] = None
    # The hub revision to read, None for the default branch. Datasets whose
    # hub repository still holds a loading script, which `datasets` no
    # longer runs, are read from the hub's own Parquet conversion of it,
    # "refs/convert/parquet" (its config is the inferred "default"; a
    # multi-config dataset picks its config's folder with hub_data_dir).
    hub_revision: Optional[str] = None

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


_HH_PAIR = re.compile(r"^(.*)\n\nResponse A:(.*)\n\nResponse B:(.*)\n\n"
                      r"Is Response A better than Response B\?$", re.S)


def hh_completions(text: str) -> list[str]:
    """The two transcripts a pairwise anthropic_hh example holds, each the
    conversation with one reply, with no hint which one was preferred: the
    text the paper's generative finetuning reads for reward modelling."""
    match = _HH_PAIR.match(text)
    if match is None:
        raise ValueError(f"not a pairwise anthropic_hh example: {text[:80]!r}")
    conversation, a, b = match.groups()
    return [f"{conversation}{_HH_ASSISTANT}{reply}" for reply in (a, b)]


# Tasks whose examples hold completions to compare (preference data): the
# generative stage's config.generative.text="completions" reads these.
COMPLETIONS = {"anthropic_hh": hh_completions}


def _chess_candidates(text: str) -> list[str]:
    from w2s_jax.data import chess_puzzles  # it builds on this module
    return chess_puzzles.candidate_texts(text)


# Tasks whose label is the index of the right one among each example's
# candidate texts, which mode "choice" scores one by one.
CHOICES = {"chess": _chess_candidates}


# ---- the rest of the paper's 22 datasets (w2s_facts.md section 5) ----

# The hub's own Parquet conversion of a dataset, for hub repositories that
# still hold a loading script (see TaskSpec.hub_revision).
PARQUET_REVISION = "refs/convert/parquet"


def _mc_draws(rng: np.random.Generator) -> tuple[bool, float]:
    """The two draws every multiple-choice row takes, first thing, whether
    or not the row is usable: the coin (show the true answer?) and the
    pick among the other candidates."""
    show_true = _coin(rng)
    return show_true, float(rng.random())


def _candidate(true_answer: str, candidates: Sequence[str],
               draws: tuple[bool, float]) -> Example | None:
    """(answer, label) for a multiple-choice item: by the coin of `draws`,
    the true answer (label 1) or, chosen by its pick, a candidate whose
    text differs from it (label 0). None when none differs."""
    show_true, pick = draws
    if show_true:
        return true_answer, 1
    # Compare texts, not indices: a duplicate of the true answer is not wrong.
    others = [c for c in candidates if c != true_answer]
    if not others:
        return None
    return others[int(pick * len(others))], 0


def _choice_text(choices: dict, key: str) -> str:
    """The text of the choice labelled `key` in a {"text": [...], "label":
    [...]} field (OpenBookQA, QuaRTz)."""
    return choices["text"][choices["label"].index(key)]


def _binary(label) -> int | None:
    """A 0/1 label as int; None for anything else, e.g. the -1 the hub
    puts where a split's labels are hidden (SuperGLUE and PIQA test)."""
    label = int(label)
    return label if label in (0, 1) else None


def _dream(row: dict, rng: np.random.Generator) -> Example | None:
    picked = _candidate(row["answer"], row["choice"], _mc_draws(rng))
    if picked is None:
        return None
    answer, label = picked
    dialogue = "\n".join(row["dialogue"])
    return (f"Dialogue:\n{dialogue}\nQuestion: {row['question']}\n"
            f"Answer: {answer}", label)


def _ethics_deontology(row: dict, rng: np.random.Generator) -> Example:
    return (f"Is the following a reasonable excuse?\n"
            f"Scenario: {row['scenario']}\nExcuse: {row['excuse']}\nA:",
            int(row["label"]))


def _virtue_parts(scenario: str) -> tuple[str, str]:
    """ETHICS Virtue packs "<sentence> [SEP] <trait>" into one field."""
    sentence, _, trait = scenario.partition("[SEP]")
    return sentence.strip(), trait.strip()


def _ethics_virtue(row: dict, rng: np.random.Generator) -> Example:
    sentence, trait = _virtue_parts(row["scenario"])
    return (f"Does the trait fit the person in the scenario?\n{sentence}\n"
            f"Trait: {trait}\nA:", int(row["label"]))


# ANLI's labels: 0 entailment, 1 neutral, 2 contradiction. The binary form
# kept here is entailment (1) vs contradiction (0); neutral rows are
# dropped, as the paper makes the 3-way task binary.
_ANLI_BINARY = {0: 1, 2: 0}


def _anli(row: dict, rng: np.random.Generator) -> Example | None:
    label = _ANLI_BINARY.get(int(row["label"]))
    if label is None:
        return None
    return (f"Premise: {row['premise']}\nHypothesis: {row['hypothesis']}",
            label)


def _anli_3way(row: dict, rng: np.random.Generator) -> Example | None:
    """All three classes as the hub numbers them: 0 entailment, 1 neutral,
    2 contradiction (-1, a hidden label, gives no example)."""
    label = int(row["label"])
    if label not in (0, 1, 2):
        return None
    return (f"Premise: {row['premise']}\nHypothesis: {row['hypothesis']}",
            label)


def _hellaswag(row: dict, rng: np.random.Generator) -> Example | None:
    draws = _mc_draws(rng)
    if row["label"] in ("", None):  # the hub's test split has no labels
        return None
    picked = _candidate(row["endings"][int(row["label"])], row["endings"],
                        draws)
    if picked is None:
        return None
    ending, label = picked
    return f"{row['activity_label']}: {row['ctx']}\nEnding: {ending}", label


def _mc_taco(row: dict, rng: np.random.Generator) -> Example:
    # Already one (sentence, question, candidate) per row, labelled yes/no;
    # about a third are yes, and load_task's balancing evens that out.
    return (f"Passage: {row['sentence']}\nQuestion: {row['question']}\n"
            f"Answer: {row['answer']}", int(row["label"]))


def _openbookqa(row: dict, rng: np.random.Generator) -> Example | None:
    choices = row["choices"]
    picked = _candidate(_choice_text(choices, row["answerKey"]),
                        choices["text"], _mc_draws(rng))
    if picked is None:
        return None
    answer, label = picked
    return f"Q: {row['question_stem']} A: {answer}", label


def _paws(row: dict, rng: np.random.Generator) -> Example:
    return (f"Sentence 1: {row['sentence1']}\nSentence 2: {row['sentence2']}\n"
            f"Do they mean the same?", int(row["label"]))


def _quail(row: dict, rng: np.random.Generator) -> Example | None:
    answers = row["answers"]
    picked = _candidate(answers[int(row["correct_answer_id"])], answers,
                        _mc_draws(rng))
    if picked is None:
        return None
    answer, label = picked
    return (f"Passage: {row['context']}\nQuestion: {row['question']}\n"
            f"Answer: {answer}", label)


def _piqa(row: dict, rng: np.random.Generator) -> Example | None:
    draws = _mc_draws(rng)
    correct = _binary(row["label"])  # 0 sol1, 1 sol2; -1 on the hub's test
    if correct is None:
        return None
    solutions = [row["sol1"], row["sol2"]]
    picked = _candidate(solutions[correct], solutions, draws)
    if picked is None:
        return None
    solution, label = picked
    return f"Goal: {row['goal']}\nSolution: {solution}", label


def _quartz(row: dict, rng: np.random.Generator) -> Example | None:
    choices = row["choices"]
    picked = _candidate(_choice_text(choices, row["answerKey"]),
                        choices["text"], _mc_draws(rng))
    if picked is None:
        return None
    answer, label = picked
    return (f"Passage: {row['para']}\nQuestion: {row['question']}\n"
            f"Answer: {answer}", label)


def _social_i_qa(row: dict, rng: np.random.Generator) -> Example | None:
    answers = [row["answerA"], row["answerB"], row["answerC"]]
    # The hub's label is the 1-based answer number, as a string.
    picked = _candidate(answers[int(row["label"]) - 1], answers,
                        _mc_draws(rng))
    if picked is None:
        return None
    answer, label = picked
    return (f"Context: {row['context']}\nQuestion: {row['question']}\n"
            f"Answer: {answer}", label)


def _multirc(row: dict, rng: np.random.Generator) -> Example | None:
    # One (paragraph, question, candidate) per row, labelled true/false.
    label = _binary(row["label"])
    if label is None:
        return None
    return (f"Passage: {row['paragraph']}\nQuestion: {row['question']}\n"
            f"Answer: {row['answer']}", label)


def _wic(row: dict, rng: np.random.Generator) -> Example | None:
    label = _binary(row["label"])
    if label is None:
        return None
    return (f"Word: {row['word']}\nSentence 1: {row['sentence1']}\n"
            f"Sentence 2: {row['sentence2']}\nSame meaning?", label)


# TweetEval sentiment: 0 negative, 1 neutral, 2 positive. Binary form:
# positive (1) vs negative (0); neutral tweets are dropped.
_TWEET_BINARY = {0: 0, 2: 1}


def _tweet_eval_sentiment(row: dict, rng: np.random.Generator
                          ) -> Example | None:
    label = _TWEET_BINARY.get(int(row["label"]))
    if label is None:
        return None
    return row["text"], label


def _tweet_eval_sentiment_3way(row: dict, rng: np.random.Generator
                               ) -> Example | None:
    """0 negative, 1 neutral, 2 positive, as the hub numbers them."""
    label = int(row["label"])
    if label not in (0, 1, 2):
        return None
    return row["text"], label


# ---- difficulty levels the datasets ship ----

# MC-TACO's category ClassLabel names on the hub, in id order.
MC_TACO_CATEGORIES = ("Event Duration", "Event Ordering", "Frequency",
                      "Typical Time", "Stationarity")


def _mc_taco_category(row: dict) -> str:
    category = row["category"]
    if isinstance(category, int) and 0 <= category < len(MC_TACO_CATEGORIES):
        return MC_TACO_CATEGORIES[category]
    return str(category)


def _quail_question_type(row: dict) -> str:
    return row["question_type"]


def _hellaswag_split_type(row: dict) -> Optional[str]:
    # "indomain" / "zeroshot" on the hub; null in the local mirror.
    return row.get("split_type")


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


def _shared_text_keys(*fields: str) -> Callable[[dict], list[str]]:
    """One key per named field, normalised, with no field prefix: a text
    in one field joins rows holding it in any other (a sentence that is
    sentence1 of one pair and sentence2 of another)."""
    def keys(row: dict) -> list[str]:
        values = (_normalise(str(row[field] or "")) for field in fields)
        return [f"text:{value}" for value in values if value]
    return keys


def _dream_keys(row: dict) -> list[str]:
    """The dialogue: by its id, and by its text in case one dialogue is
    listed under two ids."""
    text = _normalise(" ".join(row["dialogue"]))
    return [f"dialogue_id:{row['dialogue_id']}"] + (
        [f"dialogue:{text}"] if text else [])


def _hellaswag_keys(row: dict) -> list[str]:
    """The context, and the video or WikiHow article it was cut from (the
    hub's source_id; null in the mirror): one source gives several
    contexts, consecutive and overlapping."""
    keys = _field_keys("ctx")(row)
    if row.get("source_id"):
        keys.append(f"source_id:{row['source_id']}")
    return keys


def _virtue_keys(row: dict) -> list[str]:
    """The scenario sentence, without the trait: each sentence comes with
    several candidate traits."""
    sentence = _normalise(_virtue_parts(row["scenario"])[0])
    return [f"sentence:{sentence}"] if sentence else []


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
    # ---- the rest of the paper's 22 (w2s_facts.md section 5) ----
    # Up to several questions share one dialogue.
    TaskSpec("dream", "dataset-org/dream", None, None, "train", "test",
             _dream, Grouping("dialogue", _dream_keys)),
    # One request or role comes with several excuses.
    TaskSpec("ethics_deontology", "hendrycks/ethics", "deontology", None,
             "train", "test", _ethics_deontology,
             Grouping("scenario", _field_keys("scenario"))),
    TaskSpec("ethics_virtue", "hendrycks/ethics", "virtue", None, "train",
             "test", _ethics_virtue, Grouping("sentence", _virtue_keys)),
    # Round 2 only; several hypotheses are written against one premise.
    TaskSpec("anli", "facebook/anli", None, None, "train_r2", "test_r2",
             _anli, Grouping("premise", _field_keys("premise"))),
    # GLUE hides its test labels: validation is the test set.
    TaskSpec("cola", "nyu-mll/glue", "cola", None, "train", "validation",
             _sentence, Grouping("sentence", _field_keys("sentence"))),
    # The test split's labels are hidden; validation is the test set.
    TaskSpec("hellaswag", "Rowan/hellaswag", None, None, "train",
             "validation", _hellaswag,
             Grouping("context_or_source", _hellaswag_keys),
             difficulty=_hellaswag_split_type),
    # The hub has no train split: validation is the train pool. Every
    # candidate answer of every question about a sentence shares it.
    TaskSpec("mc_taco", "CogComp/mc_taco", None, None, "validation", "test",
             _mc_taco, Grouping("sentence", _field_keys("sentence")),
             difficulty=_mc_taco_category, hub_revision=PARQUET_REVISION),
    TaskSpec("openbookqa", "allenai/openbookqa", "main", None, "train",
             "test", _openbookqa,
             Grouping("question", _field_keys("question_stem"))),
    # PAWS builds many pairs from one source sentence, in either position.
    TaskSpec("paws", "google-research-datasets/paws", "labeled_final", None,
             "train", "test", _paws,
             Grouping("either_sentence",
                      _shared_text_keys("sentence1", "sentence2"))),
    # About 18 questions per story. Validation is the test set; the hub's
    # third split, "challenge" (harder questions), is not used.
    TaskSpec("quail", "textmachinelab/quail", None, None, "train",
             "validation", _quail, Grouping("context", _field_keys("context")),
             difficulty=_quail_question_type),
    # The test split's labels are hidden; validation is the test set.
    TaskSpec("piqa", "ybisk/piqa", None, None, "train", "validation", _piqa,
             Grouping("goal", _field_keys("goal")),
             hub_revision=PARQUET_REVISION),
    # Several questions are written against one paragraph.
    TaskSpec("quartz", "allenai/quartz", None, None, "train", "test",
             _quartz, Grouping("paragraph", _field_keys("para"))),
    # Its test split is not public; validation is the test set.
    TaskSpec("social_i_qa", "allenai/social_i_qa", None, None, "train",
             "validation", _social_i_qa,
             Grouping("context", _field_keys("context")),
             hub_revision=PARQUET_REVISION),
    # SuperGLUE hides its test labels: validation is the test set. Each
    # paragraph carries many (question, answer) rows.
    TaskSpec("multirc", "aps/super_glue", None, "multirc", "train",
             "validation", _multirc,
             Grouping("paragraph", _field_keys("paragraph")),
             hub_revision=PARQUET_REVISION),
    # A sentence can be in several pairs, in either position.
    TaskSpec("wic", "aps/super_glue", None, "wic", "train", "validation",
             _wic, Grouping("either_sentence",
                            _shared_text_keys("sentence1", "sentence2")),
             hub_revision=PARQUET_REVISION),
    TaskSpec("tweet_eval_sentiment", "cardiffnlp/tweet_eval", "sentiment",
             None, "train", "test", _tweet_eval_sentiment,
             Grouping("text", _field_keys("text"))),
    # The 3-way forms of the two multiclass datasets (the paper made them
    # binary, as above), balanced over all three classes.
    TaskSpec("anli_3way", "facebook/anli", None, None, "train_r2", "test_r2",
             _anli_3way, Grouping("premise", _field_keys("premise")),
             num_classes=3, mirror_name="anli"),
    TaskSpec("tweet_eval_sentiment_3way", "cardiffnlp/tweet_eval", "sentiment",
             None, "train", "test", _tweet_eval_sentiment_3way,
             Grouping("text", _field_keys("text")), num_classes=3,
             mirror_name="tweet_eval_sentiment"),
)}


def task_names() -> list[str]:
    """Every registered task, the generated chess tasks included (their
    specs depend on config.chess: chess_puzzles.spec_for)."""
    from w2s_jax.data import chess_puzzles  # it builds on this module
    return sorted([*TASKS, *chess_puzzles.TASKS])


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: "
                         f"{', '.join(sorted(TASKS))}")
    return TASKS[name]
