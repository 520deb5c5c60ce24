"""The paper's other NLP tasks: formatters, groupings and difficulty levels.

Tasks in the local mirror are checked on its real rows (the mirror named
by W2S_DATA_DIR, as in test_splits.py; without it they read the hub, so an
unset variable shows up as a failure, not a skip): the exact text and
label of a known row, the class balance of the whole formatted split, and
that no group of related rows lands on both sides of the carve-out or of
the halves A/B. PAWS, QuaRTz, MultiRC and ETHICS Deontology / Virtue are
not mirrored: their formatters are checked on rows written here with the
hub's field names.
"""
import functools

import numpy as np
import pytest

from w2s_jax.data import sources, splits, tasks

HEADS, TAILS = 0.1, 0.9  # rng.random() < 0.5 is heads: show the true answer
PARQUET = "refs/convert/parquet"


class ScriptedDraws:
    """Stands in for a Generator: returns scripted rng.random() values and
    counts the draws, so a test picks a formatter's branch and checks that
    it draws a fixed number per row."""

    def __init__(self, *values):
        self._values = list(values)
        self.drawn = 0

    def random(self):
        self.drawn += 1
        return self._values.pop(0) if self._values else HEADS


def fmt(task, row, *draws):
    """The task's example for one row under scripted draws (None if it
    skips the row); every scripted draw must be used."""
    coins = ScriptedDraws(*draws)
    example = tasks.TASKS[task].format_row(row, coins)
    assert coins.drawn >= len(draws), "formatter drew fewer coins than scripted"
    return example


# ---- real rows from the mirror ----

@functools.lru_cache(maxsize=None)
def raw(task, split):
    return sources.load_raw(tasks.get_task(task), split,
                            sources.resolve_data_dir(None))


def row_where(task, split, **fields):
    """The one row of the split whose fields have the given values."""
    found = [row for row in raw(task, split)
             if all(row[key] == value for key, value in fields.items())]
    assert len(found) == 1, f"{len(found)} rows of {task}/{split} match {fields}"
    return found[0]


def test_dream_real_row():
    row = row_where("dream", "train", dialogue_id="5-510",
                    question="What does the man suggest the woman do?")
    head = ("Dialogue:\nM: I am considering dropping my dancing class. I am "
            "not making any progress.\nW: If I were you, I stick with it. "
            "It's definitely worth time and effort.\nQuestion: What does the "
            "man suggest the woman do?\nAnswer: ")
    assert fmt("dream", row, HEADS, 0.0) == (head + "Continue her dancing class.", 1)
    # Tails: the pick indexes the two other choices in order.
    assert fmt("dream", row, TAILS, 0.6) == (head + "Take a more interesting class.", 0)


def test_anli_keeps_entailment_and_contradiction_drops_neutral():
    prefix = "563b895e-cc7d-48a9-8281-937b8c49d577"
    row = row_where("anli", "dev_r2", uid=prefix)
    assert row["label"] == 2  # contradiction
    assert fmt("anli", row) == (
        "Premise: Babes in Arms is a 1937 musical comedy with music by Richard "
        "Rodgers, lyrics by Lorenz Hart and book by Rodgers and Hart. It "
        "concerns a group of small-town Long Island teenagers who put on a "
        "show to avoid being sent to a work farm by the town sheriff when "
        "their actor parents go on the road for five months in an effort to "
        "earn some money by reviving vaudeville.\nHypothesis: Babes in Arms is "
        "a musical comedy that was released over 85 years ago in 1937.", 0)
    assert fmt("anli", {**row, "label": 0})[1] == 1
    neutral = row_where("anli", "dev_r2",
                        uid="4145fcb6-de26-4910-a4f0-64275c50f2be")
    assert neutral["label"] == 1 and fmt("anli", neutral) is None


def test_cola_real_row():
    row = row_where("cola", "train", idx=0)
    assert fmt("cola", row) == (
        "Our friends won't buy this analysis, let alone the next one we "
        "propose.", 1)


def test_hellaswag_real_row():
    row = row_where("hellaswag", "validation",
                    ctx="A man is sitting on a roof. he")
    head = "Roof shingle removal: A man is sitting on a roof. he\nEnding: "
    assert fmt("hellaswag", row, HEADS, 0.0) == (
        head + "starts pulling up roofing on a roof.", 1)
    assert fmt("hellaswag", row, TAILS, 0.5) == (
        head + "is ripping level tiles off.", 0)


def test_mc_taco_real_row():
    row = raw("mc_taco", "validation")[0]
    assert fmt("mc_taco", row) == (
        "Passage: Islam later emerged as the majority religion during the "
        "centuries of Ottoman rule, though a significant Christian minority "
        "remained.\nQuestion: Is Islam still the majority religion?\n"
        "Answer: it sometimes was", 0)


def test_openbookqa_real_row():
    row = row_where("openbookqa", "train", id="7-980")
    assert fmt("openbookqa", row, HEADS, 0.0) == (
        "Q: The sun is responsible for A: plants sprouting, blooming and "
        "wilting", 1)
    assert fmt("openbookqa", row, TAILS, 0.0) == (
        "Q: The sun is responsible for A: puppies learning new tricks", 0)


def test_quail_real_row():
    row = row_where("quail", "validation", id="f141_1")
    text, label = fmt("quail", row, TAILS, 0.99)
    assert label == 0
    assert text.startswith("Passage: Candy watched the bearded man drive his "
                           "silver BMW into the convenience store")
    assert text.endswith("\nQuestion: When Candy approached Larry:\n"
                         "Answer: not enough information")
    assert fmt("quail", row, HEADS, 0.0) == (
        text.replace("not enough information", "As he got out of the car"), 1)


def test_piqa_real_row():
    row = row_where("piqa", "validation",
                    goal="How do I ready a guinea pig cage for it's new "
                         "occupants?")
    head = ("Goal: How do I ready a guinea pig cage for it's new occupants?\n"
            "Solution: Provide the guinea pig with a cage full of a few inches "
            "of bedding made of ripped ")
    tail = (", you will also need to supply it with a water bottle and a "
            "food dish.")
    assert fmt("piqa", row, HEADS, 0.0) == (head + "paper strips" + tail, 1)
    assert fmt("piqa", row, TAILS, 0.0) == (head + "jeans material" + tail, 0)


def test_social_i_qa_real_row():
    row = row_where("social_i_qa", "train",
                    context="Cameron decided to have a barbecue and gathered "
                            "her friends together.",
                    question="How would Others feel as a result?")
    head = ("Context: Cameron decided to have a barbecue and gathered her "
            "friends together.\nQuestion: How would Others feel as a result?\n"
            "Answer: ")
    assert fmt("social_i_qa", row, HEADS, 0.0) == (head + "like attending", 1)
    assert fmt("social_i_qa", row, TAILS, 0.7) == (
        head + "a good friend to have", 0)


def test_wic_real_row():
    row = row_where("wic", "train", idx=0)
    assert fmt("wic", row) == (
        "Word: carry\nSentence 1: You must carry your camping gear .\n"
        "Sentence 2: Sound carries well over water .\nSame meaning?", 0)


def test_tweet_eval_sentiment_keeps_positive_and_negative():
    rows = raw("tweet_eval_sentiment", "test")
    assert fmt("tweet_eval_sentiment", rows[4]) == (
        "@user Wow,first Hugo Chavez and now Fidel Castro. Danny Glover, "
        "Michael Moore, Oliver Stone, and Sean Penn are running out of "
        "heroes.", 0)
    assert fmt("tweet_eval_sentiment", rows[3]) == (
        "I think I may be finally in with the in crowd #mannequinchallenge  "
        "#grads2014 @user", 1)
    assert rows[0]["label"] == 1 and fmt("tweet_eval_sentiment", rows[0]) is None


@pytest.mark.parametrize("task, mirror_split", [("anli_3way", "dev_r2"),
                                                ("tweet_eval_sentiment_3way", "test")])
def test_three_way_forms_keep_the_hubs_three_labels(task, mirror_split):
    """The 3-way tasks read the binary task's mirror files, keep every
    class with the hub's numbering, and balance all three."""
    base = task.removesuffix("_3way")
    rows = raw(base, mirror_split)
    for row in rows[:50]:
        text, label = fmt(task, row)
        assert label == row["label"]
        binary = fmt(base, row)
        assert binary is None or binary[0] == text  # same text as the binary form
    data = splits.load_task(task, data_dir=sources.resolve_data_dir(None),
                            seed=0, n_train=None, n_test=None)
    for labels in (data.train_labels, data.test_labels):
        counts = np.bincount(labels, minlength=3)
        assert len(counts) == 3 and counts.min() == counts.max() > 0


# ---- the whole of each mirrored split ----

# Tasks whose labels come from a seeded coin: the formatted split is about
# 50% positive by itself.
COIN_SPLITS = {"dream": "train", "hellaswag": "validation",
               "openbookqa": "train", "quail": "validation",
               "piqa": "validation", "social_i_qa": "train"}

# Tasks whose labels are the dataset's own: the formatted split has the
# dataset's class counts {0: ..., 1: ...}, which load_task balances.
NATIVE_COUNTS = {
    ("anli", "dev_r2"): {0: 333, 1: 334},  # contradiction / entailment
    ("cola", "train"): {0: 2528, 1: 6023},
    ("mc_taco", "validation"): {0: 2554, 1: 1229},
    ("wic", "train"): {0: 2714, 1: 2714},
    ("tweet_eval_sentiment", "test"): {0: 3972, 1: 2375},  # neg / pos
}


def class_counts(examples):
    labels = [label for _, label in examples]
    return {0: labels.count(0), 1: labels.count(1)}


@pytest.mark.parametrize("task, split", sorted(COIN_SPLITS.items()))
def test_coin_tasks_are_balanced_and_draw_two_coins_per_row(task, split):
    rows = raw(task, split)
    examples = tasks.TASKS[task].format_rows(rows, np.random.default_rng(0))
    counts = class_counts(examples)
    assert len(examples) >= 0.99 * len(rows)
    assert abs(counts[1] / len(examples) - 0.5) < 0.03, counts
    # A fixed number of draws per row, whichever branch each row took.
    for row in rows[:50]:
        coins = ScriptedDraws()
        tasks.TASKS[task].format_row(row, coins)
        assert coins.drawn == 2


@pytest.mark.parametrize("task, split", sorted(NATIVE_COUNTS))
def test_native_label_tasks_keep_the_datasets_counts(task, split):
    examples = tasks.TASKS[task].format_rows(raw(task, split),
                                             np.random.default_rng(0))
    assert class_counts(examples) == NATIVE_COUNTS[task, split]


# What each task's examples show of the text its grouping joins rows by.
def _before(marker):
    return lambda text: {text.split(marker)[0]}


def _whole(text):
    return {text}


def _wic_sentences(text):
    lines = text.split("\n")
    return {lines[1].split(": ", 1)[1], lines[2].split(": ", 1)[1]}


SHARED_TEXT = {
    "dream": _before("\nQuestion: "),
    "anli": _before("\nHypothesis: "),
    "cola": _whole,
    "hellaswag": _before("\nEnding: "),
    "mc_taco": _before("\nQuestion: "),
    "openbookqa": _before(" A: "),
    "quail": _before("\nQuestion: "),
    "piqa": _before("\nSolution: "),
    "social_i_qa": _before("\nQuestion: "),
    "wic": _wic_sentences,
    "tweet_eval_sentiment": _whole,
}
GROUPING = {"dream": "dialogue", "anli": "premise", "cola": "sentence",
            "hellaswag": "context_or_source", "mc_taco": "sentence",
            "openbookqa": "question", "quail": "context", "piqa": "goal",
            "social_i_qa": "context", "wic": "either_sentence",
            "tweet_eval_sentiment": "text"}


def shared(task, texts):
    return set().union(*(SHARED_TEXT[task](text) for text in texts))


@functools.lru_cache(maxsize=None)
def whole_task(task):
    return splits.load_task(task, data_dir=sources.resolve_data_dir(None),
                            seed=0, n_train=None, n_test=None)


@pytest.mark.parametrize("task", sorted(SHARED_TEXT))
def test_balanced_sides_and_no_group_across_carve_or_halves(task):
    assert tasks.TASKS[task].grouping.name == GROUPING[task]
    data = whole_task(task)
    for labels in (data.train_labels, data.test_labels):
        assert np.sum(labels == 1) == np.sum(labels == 0) > 0
    if data.provenance["carve_out"] is not None:
        assert not shared(task, data.train_texts) & shared(task, data.test_texts)
    a, b = splits.split_halves(len(data.train_texts), seed=0,
                               groups=data.train_groups)
    assert abs(len(a) - len(b)) <= 0.05 * len(data.train_texts)
    assert not set(data.train_groups[a]) & set(data.train_groups[b])
    texts = data.train_texts
    assert not (shared(task, [texts[i] for i in a])
                & shared(task, [texts[i] for i in b]))


# (task, the split carved, its rows, its groups): how many rows share text.
CARVED = [("anli", "dev_r2", 1000, 872),  # hypotheses on one premise
          ("hellaswag", "validation", 10042, 10018),
          ("quail", "validation", 2164, 119),  # questions on one story
          ("piqa", "validation", 1838, 1801),
          ("tweet_eval_sentiment", "test", 12284, 12271)]  # repeated tweets


@pytest.mark.parametrize("task, split, n_rows, n_groups", CARVED)
def test_carved_tasks_record_their_carve_and_groups(task, split, n_rows,
                                                    n_groups):
    carve = whole_task(task).provenance["carve_out"]
    assert (carve["from_split"], carve["grouping"]) == (split, GROUPING[task])
    assert (carve["rows_read"], carve["groups"]) == (n_rows, n_groups)
    assert carve["groups_train"] + carve["groups_test"] == n_groups


def test_hellaswag_groups_contexts_of_one_source_where_the_hub_names_it():
    row = {"ctx": "A man is sitting on a roof. he", "source_id": None}
    rows = [row, {**row, "ctx": "a man is sitting on a roof he"},
            {"ctx": "He pulls up shingles.", "source_id": "activitynet~v_1"},
            {"ctx": "He throws them down.", "source_id": "activitynet~v_1"},
            {"ctx": "He throws them down.", "source_id": None},
            {"ctx": "A lady walks to a barbell.", "source_id": None}]
    assert tasks.TASKS["hellaswag"].grouping.assign(rows).tolist() == [
        0, 0, 1, 1, 1, 2]


def test_difficulty_levels_of_the_test_set():
    quail = whole_task("quail")
    assert set(quail.test_difficulty) == {
        "Belief_states", "Causality", "Character_identity", "Entity_properties",
        "Event_duration", "Factual", "Subsequent_state", "Temporal_order",
        "Unanswerable"}
    assert len(quail.test_difficulty) == len(quail.test_texts)
    mc_taco = whole_task("mc_taco")
    assert set(mc_taco.test_difficulty) == set(tasks.MC_TACO_CATEGORIES)
    # Category 2 holds the "How often" questions: Frequency.
    row = raw("mc_taco", "validation")[0]
    assert tasks.TASKS["mc_taco"].difficulty({**row, "category": 2}) == "Frequency"
    # The mirror has no HellaSwag split_type (null): every level is unknown.
    assert set(whole_task("hellaswag").test_difficulty) == {"unknown"}
    assert tasks.TASKS["hellaswag"].difficulty(
        {"split_type": "zeroshot"}) == "zeroshot"


# ---- not mirrored: rows with the hub's field names ----

PAWS_ROWS = [
    {"id": 1, "sentence1": "In Paris , in October 1560 , he secretly met the "
     "English ambassador .", "sentence2": "In October 1560 , he secretly met "
     "with the English ambassador in Paris .", "label": 1},
    {"id": 2, "sentence1": "In October 1560 , he secretly met with the English "
     "ambassador in Paris .", "sentence2": "In Paris , in October 1560 , the "
     "English ambassador secretly met him .", "label": 0},
    {"id": 3, "sentence1": "The team won .", "sentence2": "The team lost .",
     "label": 0},
]


def test_paws_text_label_and_groups_across_positions():
    assert fmt("paws", PAWS_ROWS[0]) == (
        "Sentence 1: In Paris , in October 1560 , he secretly met the English "
        "ambassador .\nSentence 2: In October 1560 , he secretly met with the "
        "English ambassador in Paris .\nDo they mean the same?", 1)
    # Row 2's sentence1 is row 1's sentence2: one group.
    assert tasks.TASKS["paws"].grouping.assign(PAWS_ROWS).tolist() == [0, 0, 1]


QUARTZ_ROW = {
    "id": "QRQA-10116-3", "question": "If Mona is making a road and she wants "
    "to make it safer, what should she do?", "choices": {
        "text": ["make it steeper", "make it less steep"], "label": ["A", "B"]},
    "answerKey": "B", "para": "Steeper roads are more dangerous.",
    "para_id": "QRSent-10116", "para_anno": {}, "question_anno": {}}


def test_quartz_both_branches_and_balance():
    head = ("Passage: Steeper roads are more dangerous.\nQuestion: If Mona is "
            "making a road and she wants to make it safer, what should she do?"
            "\nAnswer: ")
    assert fmt("quartz", QUARTZ_ROW, HEADS, 0.0) == (head + "make it less steep", 1)
    assert fmt("quartz", QUARTZ_ROW, TAILS, 0.0) == (head + "make it steeper", 0)
    examples = tasks.TASKS["quartz"].format_rows([QUARTZ_ROW] * 1000,
                                                 np.random.default_rng(0))
    assert abs(class_counts(examples)[1] - 500) < 50
    other = {**QUARTZ_ROW, "question": "Which road is safer?"}
    assert tasks.TASKS["quartz"].grouping.assign(
        [QUARTZ_ROW, other, {**QUARTZ_ROW, "para": "Ice is slippery."}]
    ).tolist() == [0, 0, 1]


MULTIRC_ROW = {
    "paragraph": "Sam went to the store. He bought milk.",
    "question": "What did Sam buy?", "answer": "Milk",
    "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 1}


def test_multirc_text_label_hidden_test_labels_and_groups():
    assert fmt("multirc", MULTIRC_ROW) == (
        "Passage: Sam went to the store. He bought milk.\n"
        "Question: What did Sam buy?\nAnswer: Milk", 1)
    assert fmt("multirc", {**MULTIRC_ROW, "answer": "Bread", "label": 0})[1] == 0
    # The hub's test split has label -1: not a usable example.
    assert fmt("multirc", {**MULTIRC_ROW, "label": -1}) is None
    rows = [MULTIRC_ROW, {**MULTIRC_ROW, "answer": "Eggs", "label": 0},
            {**MULTIRC_ROW, "paragraph": "Ann ran."}]
    assert tasks.TASKS["multirc"].grouping.assign(rows).tolist() == [0, 0, 1]


DEONTOLOGY_ROW = {"label": 0, "scenario": "Aren't you supposed to be "
                  "painting the house?", "excuse": "No because the paint "
                  "already peeled off."}


def test_ethics_deontology():
    assert fmt("ethics_deontology", DEONTOLOGY_ROW) == (
        "Is the following a reasonable excuse?\nScenario: Aren't you supposed "
        "to be painting the house?\nExcuse: No because the paint already "
        "peeled off.\nA:", 0)
    rows = [DEONTOLOGY_ROW, {**DEONTOLOGY_ROW, "excuse": "No, I painted it "
                             "yesterday.", "label": 1},
            {**DEONTOLOGY_ROW, "scenario": "Could you walk my dog?"}]
    assert tasks.TASKS["ethics_deontology"].grouping.assign(rows).tolist() == [
        0, 0, 1]


VIRTUE_ROW = {"label": 1, "scenario": "Martha hired a new babysitter and "
              "was totally at ease with her. [SEP] trustful"}


def test_ethics_virtue_splits_sentence_and_trait_and_groups_by_sentence():
    assert fmt("ethics_virtue", VIRTUE_ROW) == (
        "Does the trait fit the person in the scenario?\nMartha hired a new "
        "babysitter and was totally at ease with her.\nTrait: trustful\nA:", 1)
    rows = [VIRTUE_ROW, {"label": 0, "scenario": "Martha hired a new "
                         "babysitter and was totally at ease with her. [SEP] "
                         "cruel"},
            {"label": 1, "scenario": "Tom shared his lunch. [SEP] kind"}]
    assert tasks.TASKS["ethics_virtue"].grouping.assign(rows).tolist() == [
        0, 0, 1]


# ---- registry and hub sources ----

NEW_TASKS = {
    # name: (hub id, config, data_dir, train split, test split, revision)
    "anli": ("facebook/anli", None, None, "train_r2", "test_r2", None),
    "cola": ("nyu-mll/glue", "cola", None, "train", "validation", None),
    "dream": ("dataset-org/dream", None, None, "train", "test", None),
    "ethics_deontology": ("hendrycks/ethics", "deontology", None, "train",
                          "test", None),
    "ethics_virtue": ("hendrycks/ethics", "virtue", None, "train", "test",
                      None),
    "hellaswag": ("Rowan/hellaswag", None, None, "train", "validation", None),
    "mc_taco": ("CogComp/mc_taco", None, None, "validation", "test", PARQUET),
    "multirc": ("aps/super_glue", None, "multirc", "train", "validation",
                PARQUET),
    "openbookqa": ("allenai/openbookqa", "main", None, "train", "test", None),
    "paws": ("google-research-datasets/paws", "labeled_final", None, "train",
             "test", None),
    "piqa": ("ybisk/piqa", None, None, "train", "validation", PARQUET),
    "quail": ("textmachinelab/quail", None, None, "train", "validation", None),
    "quartz": ("allenai/quartz", None, None, "train", "test", None),
    "social_i_qa": ("allenai/social_i_qa", None, None, "train", "validation",
                    PARQUET),
    "tweet_eval_sentiment": ("cardiffnlp/tweet_eval", "sentiment", None,
                             "train", "test", None),
    "wic": ("aps/super_glue", None, "wic", "train", "validation", PARQUET),
}


def test_registry_has_the_papers_22_datasets():
    for name, expected in NEW_TASKS.items():
        spec = tasks.get_task(name)
        assert (spec.hub_id, spec.hub_config, spec.hub_data_dir,
                spec.train_split, spec.test_split, spec.hub_revision) == expected
    paper = set(NEW_TASKS) | {"boolq", "cosmos_qa", "ethics_justice",
                              "ethics_utilitarianism", "sciq", "sst2"}
    assert len(paper) == 22 and paper <= set(tasks.TASKS)
    # Tasks from before keep reading the hub's default branch.
    assert tasks.get_task("sciq").hub_revision is None


def test_load_raw_reads_the_parquet_revision_from_the_hub(monkeypatch):
    import datasets

    calls = []

    class Loaded:
        def to_list(self):
            return [{"sentence": "x"}]

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return Loaded()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert sources.load_raw(tasks.get_task("wic"), "train", None) == [
        {"sentence": "x"}]
    assert calls == [(("aps/super_glue", None), {
        "data_dir": "wic", "revision": PARQUET, "split": "train"})]
