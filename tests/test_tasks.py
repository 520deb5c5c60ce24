"""Task registry, formatters and raw-row sources, on hand-written rows."""
import json

import numpy as np
import pytest

from w2s_jax.data import sources, tasks

EXPECTED_TASKS = ["amazon_polarity", "anli", "anli_3way", "anthropic_hh", "boolq",
                  "cola", "cosmos_qa", "cr", "dream", "ethics_deontology",
                  "ethics_justice", "ethics_utilitarianism", "ethics_virtue",
                  "hellaswag", "mc_taco", "multirc", "openbookqa", "paws", "piqa",
                  "quail", "quartz", "sciq", "social_i_qa", "sst2",
                  "tweet_eval_sentiment", "tweet_eval_sentiment_3way", "wic"]


class ScriptedCoins:
    """Stands in for a Generator: returns scripted draws, so a test can pick
    each branch of a formatter and check the exact text."""

    def __init__(self, randoms=(), integers=()):
        self._randoms, self._integers = list(randoms), list(integers)

    def random(self):
        return self._randoms.pop(0)

    def integers(self, low, high):
        value = self._integers.pop(0)
        assert low <= value < high
        return value

    def exhausted(self):
        return not self._randoms and not self._integers


HEADS, TAILS = 0.1, 0.9  # rng.random() < 0.5 is heads


def fmt(task, row, coins=None):
    coins = coins if coins is not None else ScriptedCoins()
    examples = tasks.TASKS[task].format_rows([row], coins)
    assert coins.exhausted(), "formatter drew fewer coins than scripted"
    return examples


def test_registry_names_and_specs():
    # The generated chess tasks are named too (their specs come from
    # config.chess: test_chess.py).
    assert tasks.task_names() == sorted(EXPECTED_TASKS + ["chess", "chess_binary"])
    assert {name: spec.name for name, spec in tasks.TASKS.items()} == {
        name: name for name in EXPECTED_TASKS}
    sst2 = tasks.TASKS["sst2"]
    assert (sst2.hub_id, sst2.hub_config, sst2.test_split) == (
        "nyu-mll/glue", "sst2", "validation")
    hh = tasks.TASKS["anthropic_hh"]
    assert (hh.hub_id, hh.hub_config, hh.hub_data_dir) == (
        "Anthropic/hh-rlhf", None, "harmless-base")
    assert tasks.TASKS["ethics_justice"].hub_config == "justice"
    assert tasks.TASKS["boolq"].test_split == "validation"


def test_unknown_task_lists_sorted_choices():
    with pytest.raises(ValueError) as err:
        tasks.get_task("sciqq")
    assert "'sciqq'" in str(err.value)
    assert ", ".join(EXPECTED_TASKS) in str(err.value)


SCIQ_ROW = {"question": "What gas do plants absorb?", "correct_answer": "CO2",
            "distractor1": "O2", "distractor2": "N2", "distractor3": "He",
            "support": ""}


def test_sciq_correct_and_distractor():
    assert fmt("sciq", SCIQ_ROW, ScriptedCoins([HEADS], [3])) == [
        ("Q: What gas do plants absorb? A: CO2", 1)]
    assert fmt("sciq", SCIQ_ROW, ScriptedCoins([TAILS], [2])) == [
        ("Q: What gas do plants absorb? A: N2", 0)]


def test_sciq_with_real_generator_gives_both_labels_deterministically():
    rows = [SCIQ_ROW] * 200
    first = tasks.TASKS["sciq"].format_rows(rows, np.random.default_rng(3))
    again = tasks.TASKS["sciq"].format_rows(rows, np.random.default_rng(3))
    assert first == again
    labels = [label for _, label in first]
    assert 60 < sum(labels) < 140
    assert {text.split(" A: ")[1] for text, label in first if label == 0} == {
        "O2", "N2", "He"}


def test_boolq():
    row = {"passage": "Water boils at 100 C at sea level.",
           "question": "does water boil at 100 c", "answer": True}
    assert fmt("boolq", row) == [(
        "Passage: Water boils at 100 C at sea level.\n"
        "Question: does water boil at 100 c", 1)]
    assert fmt("boolq", {**row, "answer": False})[0][1] == 0


COSMOS_ROW = {"id": "x", "context": "I missed the bus.",
              "question": "Why was I late?", "answer0": "The bus left.",
              "answer1": "I overslept.", "answer2": "It rained.",
              "answer3": "None of the above choices .", "label": 1}


def test_cosmos_qa_true_and_other_candidate():
    prefix = "Context: I missed the bus.\nQuestion: Why was I late?\nAnswer: "
    assert fmt("cosmos_qa", COSMOS_ROW, ScriptedCoins([HEADS, 0.0])) == [
        (prefix + "I overslept.", 1)]
    # Tails: the pick indexes the other three candidates in order.
    assert fmt("cosmos_qa", COSMOS_ROW, ScriptedCoins([TAILS, 0.5])) == [
        (prefix + "It rained.", 0)]


def test_cosmos_qa_none_of_the_above_is_always_a_negative():
    row = {**COSMOS_ROW, "label": 3}
    [(text, label)] = fmt("cosmos_qa", row, ScriptedCoins([HEADS, 0.0]))
    assert label == 0
    assert text.endswith("Answer: The bus left.")


def test_plain_text_tasks():
    assert fmt("amazon_polarity", {"title": "Great", "content": "Loved it.",
                                   "label": 1}) == [("Great Loved it.", 1)]
    assert fmt("sst2", {"sentence": "a dull film", "label": 0, "idx": 7}) == [
        ("a dull film", 0)]
    assert fmt("cr", {"text": "battery lasts long", "label": 1}) == [
        ("battery lasts long", 1)]
    assert fmt("ethics_justice", {"scenario": "I deserve a raise because I "
                                  "worked hard.", "label": 1}) == [(
        "Is the following a reasonable justification?\n"
        "I deserve a raise because I worked hard.\nA:", 1)]


@pytest.mark.parametrize("order_coin, answer_coin, text_order, answer, label", [
    (HEADS, HEADS, ("Sunny day.", "Rainy day."), 1, 1),
    (HEADS, TAILS, ("Sunny day.", "Rainy day."), 2, 0),
    (TAILS, HEADS, ("Rainy day.", "Sunny day."), 1, 0),
    (TAILS, TAILS, ("Rainy day.", "Sunny day."), 2, 1),
])
def test_ethics_utilitarianism(order_coin, answer_coin, text_order, answer,
                               label):
    row = {"baseline": "Sunny day.", "less_pleasant": "Rainy day."}
    assert fmt("ethics_utilitarianism", row,
               ScriptedCoins([order_coin, answer_coin])) == [(
        f"Which is more pleasant?\n1) {text_order[0]}\n2) {text_order[1]}\n"
        f"A: {answer}", label)]


HH_CONVERSATION = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
                   "\n\nHuman: Tell me a joke.")
HH_ROW = {"chosen": HH_CONVERSATION + "\n\nAssistant: Why did the chicken...",
          "rejected": HH_CONVERSATION + "\n\nAssistant: No."}


def test_hh_split_at_common_prefix_of_turns():
    conversation, chosen, rejected = tasks.split_hh_pair(HH_ROW["chosen"],
                                                         HH_ROW["rejected"])
    assert conversation == HH_CONVERSATION.lstrip()
    assert (chosen, rejected) == (" Why did the chicken...", " No.")


def test_hh_split_is_by_whole_turns_not_characters():
    # The replies share the characters " No" but not a whole turn: the split
    # must stay at the start of the final Assistant turn.
    conversation, chosen, rejected = tasks.split_hh_pair(
        HH_CONVERSATION + "\n\nAssistant: Nope.",
        HH_CONVERSATION + "\n\nAssistant: No.")
    assert conversation.endswith("Tell me a joke.")
    assert (chosen, rejected) == (" Nope.", " No.")


def test_hh_split_backs_off_to_an_assistant_turn():
    # Transcripts diverging at a Human turn are split at the Assistant turn
    # before it, so each reply starts as an Assistant reply.
    chosen = "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D"
    rejected = "\n\nHuman: A\n\nAssistant: B\n\nHuman: X\n\nAssistant: Y"
    assert tasks.split_hh_pair(chosen, rejected) == (
        "Human: A", " B\n\nHuman: C\n\nAssistant: D",
        " B\n\nHuman: X\n\nAssistant: Y")
    assert tasks.split_hh_pair("\n\nHuman: A", "\n\nHuman: B") is None


def test_anthropic_hh_pairwise_prompt_both_orders():
    question = "\n\nIs Response A better than Response B?"
    conversation = HH_CONVERSATION.lstrip()
    assert fmt("anthropic_hh", HH_ROW, ScriptedCoins([HEADS])) == [(
        f"{conversation}\n\nResponse A: Why did the chicken...\n\n"
        f"Response B: No.{question}", 1)]
    assert fmt("anthropic_hh", HH_ROW, ScriptedCoins([TAILS])) == [(
        f"{conversation}\n\nResponse A: No.\n\n"
        f"Response B: Why did the chicken...{question}", 0)]


def test_anthropic_hh_skips_identical_pairs():
    same = {"chosen": HH_ROW["chosen"], "rejected": HH_ROW["chosen"]}
    assert fmt("anthropic_hh", same, ScriptedCoins([HEADS])) == []


# ---- sources ----

def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_resolve_data_dir_precedence(monkeypatch):
    monkeypatch.setenv(sources.DATA_DIR_ENV, "/from/env")
    assert sources.resolve_data_dir("/from/config") == "/from/config"
    assert sources.resolve_data_dir("") == "/from/env"
    assert sources.resolve_data_dir(None) == "/from/env"
    monkeypatch.delenv(sources.DATA_DIR_ENV)
    assert sources.resolve_data_dir("") is None


def test_load_raw_and_splits_from_mirror(tmp_path):
    rows = [{"sentence": "good", "label": 1, "idx": 0},
            {"sentence": "bad", "label": 0, "idx": 1}]
    write_jsonl(tmp_path / "sst2" / "validation.jsonl", rows)
    write_jsonl(tmp_path / "sst2" / "train.jsonl", rows[:1])
    spec = tasks.TASKS["sst2"]
    assert sources.available_mirror_splits(spec, str(tmp_path)) == [
        "train", "validation"]
    assert sources.load_raw(spec, "validation", str(tmp_path)) == rows


def test_mirror_lacking_the_task_names_path_and_holdings(tmp_path):
    write_jsonl(tmp_path / "sst2" / "train.jsonl", [{"sentence": "a", "label": 1}])
    (tmp_path / "cr").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        sources.load_raw(tasks.TASKS["sciq"], "train", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "sciq") in message
    assert "cr, sst2" in message
    assert "hub" in message and sources.DATA_DIR_ENV in message


def test_mirror_task_without_split_files_lists_contents(tmp_path):
    (tmp_path / "cr").mkdir()
    (tmp_path / "cr" / "README.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="README.txt"):
        sources.available_mirror_splits(tasks.TASKS["cr"], str(tmp_path))


def test_load_raw_missing_split_lists_available(tmp_path):
    write_jsonl(tmp_path / "cr" / "all.jsonl", [{"text": "a", "label": 1}])
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl.*: all"):
        sources.load_raw(tasks.TASKS["cr"], "train", str(tmp_path))


# ---- groupings ----

def groups(task, rows):
    return tasks.TASKS[task].grouping.assign(rows).tolist()


def test_every_task_names_its_grouping():
    names = {name: spec.grouping.name for name, spec in tasks.TASKS.items()}
    assert names == {
        "amazon_polarity": "text", "anthropic_hh": "first_human_turn",
        "boolq": "passage_overlap", "cosmos_qa": "context", "cr": "text",
        "ethics_justice": "scenario", "ethics_utilitarianism": "either_scenario",
        "sciq": "question", "sst2": "row",
        "anli": "premise", "anli_3way": "premise", "cola": "sentence",
        "dream": "dialogue", "ethics_deontology": "scenario",
        "ethics_virtue": "sentence", "hellaswag": "context_or_source",
        "mc_taco": "sentence", "multirc": "paragraph", "openbookqa": "question",
        "paws": "either_sentence", "piqa": "goal", "quail": "context",
        "quartz": "paragraph", "social_i_qa": "context",
        "tweet_eval_sentiment": "text", "tweet_eval_sentiment_3way": "text",
        "wic": "either_sentence"}
    # sst2 keeps one row per group: its halves A/B must not move.
    assert tasks.TASKS["sst2"].grouping is tasks.ROW
    rows = [{"sentence": "same", "label": 1, "idx": i} for i in range(3)]
    assert groups("sst2", rows) == [0, 1, 2]


def test_cosmos_qa_groups_by_story_across_questions():
    rows = [COSMOS_ROW, {**COSMOS_ROW, "question": "What happened next?"},
            {**COSMOS_ROW, "context": "I caught the bus."},
            {**COSMOS_ROW, "context": "i missed  the bus"}]
    assert groups("cosmos_qa", rows) == [0, 0, 1, 0]


BOOLQ_PASSAGE = ("The Originals, a one-hour American supernatural drama, was "
                 "renewed for a fifth season by The CW on May 10, 2017. The "
                 "season premiered on April 18, 2018 and ran for 13 episodes.")


def test_boolq_groups_near_copies_of_a_passage():
    rows = [{"passage": BOOLQ_PASSAGE, "question": "q1", "answer": True},
            # one character changed near the end
            {"passage": BOOLQ_PASSAGE.replace("13", "12"), "question": "q2",
             "answer": False},
            # a changed opening, but a long sentence in common
            {"passage": "Series five. " + BOOLQ_PASSAGE.split(". ", 1)[1],
             "question": "q3", "answer": True},
            {"passage": "Water boils at 100 C at sea level, which is a fact "
                        "taught in school.", "question": "q4", "answer": True}]
    assert groups("boolq", rows) == [0, 0, 0, 1]


def test_anthropic_hh_groups_rollouts_of_one_opening_prompt():
    other = "\n\nHuman: Where is Paris?\n\nAssistant: France."
    rows = [HH_ROW, {"chosen": HH_ROW["chosen"].replace("joke", "story"),
                     "rejected": HH_ROW["rejected"]},
            {"chosen": "\n\nHuman: hi there!\n\nAssistant: France.",
             "rejected": ""},
            {"chosen": other, "rejected": other + "!"}]
    assert groups("anthropic_hh", rows) == [0, 0, 0, 1]


def test_groupings_by_field():
    assert groups("sciq", [SCIQ_ROW, {**SCIQ_ROW, "correct_answer": "x"},
                           {**SCIQ_ROW, "question": "Other?"}]) == [0, 0, 1]
    util = [{"baseline": "A.", "less_pleasant": "B."},
            {"baseline": "C.", "less_pleasant": "D."},
            {"baseline": "A.", "less_pleasant": "E."},
            {"baseline": "F.", "less_pleasant": "D."},
            {"baseline": "G.", "less_pleasant": "H."}]
    assert groups("ethics_utilitarianism", util) == [0, 1, 0, 1, 2]
    assert groups("cr", [{"text": "Great camera .", "label": 1},
                         {"text": "great camera.", "label": 1},
                         {"text": "", "label": 0}, {"text": "", "label": 1}]) == [
        0, 0, 1, 2]


def test_format_rows_indexed_points_at_each_examples_row():
    same = {"chosen": HH_ROW["chosen"], "rejected": HH_ROW["chosen"]}
    rows = [HH_ROW, same, HH_ROW, same, HH_ROW]
    spec = tasks.TASKS["anthropic_hh"]
    examples, source = spec.format_rows_indexed(rows, np.random.default_rng(1))
    assert source.tolist() == [0, 2, 4]
    assert examples == spec.format_rows(rows, np.random.default_rng(1))
