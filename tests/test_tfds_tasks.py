"""A TFDS dataset as a task, read without TensorFlow: the splits and
layouts read the rows the builder wrote, a builder without a test split is
carved, a bad task or field is one error line, and a run goes end to end.

The datasets are real TFDS array_record datasets, prepared once by a
subprocess from builders in a module file (TFDS needs the builder's module
to be a file); this process never imports that module, so reading them
back by name and data dir is what a user's fresh process does.
"""
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_recipes import WORDS
from w2s_jax.data import splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {"text": "text", "label": "label", "text_pair": "", "choices": "",
          "group": ""}
BUILDERS = textwrap.dedent('''
    import json
    import os

    import numpy as np
    import tensorflow_datasets as tfds

    with open(os.path.join(os.path.dirname(__file__), "rows.json")) as f:
        ROWS = json.load(f)


    class TinyReviews(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            # Not dataset_info_from_configs: it wants the module in a package.
            features = tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["neg", "pos"]),
                "hypothesis": tfds.features.Text(),
                "options": tfds.features.Sequence(tfds.features.Text()),
                "right": tfds.features.Scalar(dtype=np.int64),
                "topic": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split)
                    for split in ROWS[self.name]}

        def _generate_examples(self, split):
            for i, row in enumerate(ROWS[self.name][split]):
                yield i, row


    class TinyTrainOnly(TinyReviews):
        pass


    class TinyOffline(TinyReviews):
        def _split_generators(self, dl_manager):
            raise ConnectionError("no network here")
''')


def _rows(n, start, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n):
        label = int(rng.integers(2))
        rows.append({"text": f"a {WORDS[label][i % 4]} film number {i}",
                     "label": label, "hypothesis": f"claim {i}",
                     "options": [f"x{i}", f"y{i}", f"z{i}"], "right": i % 3,
                     "topic": f"t{i % 30}"})
    return rows


ROWS = {"tiny_reviews": {"train": _rows(400, 0, 1),
                         "validation": _rows(100, 400, 2)},
        "tiny_train_only": {"train": _rows(300, 0, 3)}}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir holding tiny_reviews and tiny_train_only."""
    root = tmp_path_factory.mktemp("tfds")
    (root / "module").mkdir()
    (root / "module" / "tiny_builders.py").write_text(BUILDERS)
    (root / "module" / "rows.json").write_text(json.dumps(ROWS))
    prepare = ("import tiny_builders as b\n"
               "for cls in (b.TinyReviews, b.TinyTrainOnly):\n"
               f"    cls(data_dir={str(root / 'data')!r}).download_and_prepare("
               "file_format='array_record')\n")
    subprocess.run([sys.executable, "-c", prepare], cwd=root / "module",
                   check=True, capture_output=True)
    return str(root / "data")


def _load(task, tfds_dir, **fields):
    return splits.load_task(task, data_dir=None, seed=0, n_train=None,
                            n_test=None, task_fields={**FIELDS, **fields},
                            tfds_data_dir=tfds_dir)


def _examples(data):
    return (list(zip(data.train_texts, data.train_labels.tolist())),
            list(zip(data.test_texts, data.test_labels.tolist())))


def test_train_and_validation_splits_read_back_by_name(tfds_dir):
    data = _load("tfds:tiny_reviews", tfds_dir)
    assert "tiny_builders" not in sys.modules
    assert "tensorflow" not in sys.modules
    train, test = _examples(data)
    for examples, split in ((train, "train"), (test, "validation")):
        written = {r["text"]: r["label"] for r in ROWS["tiny_reviews"][split]}
        assert all(written[text] == label for text, label in examples)
        counts = np.bincount([label for _, label in examples], minlength=2)
        # Balanced: every row of the rarer class, as many of the other.
        assert counts[0] == counts[1] == min(
            np.bincount(list(written.values()), minlength=2))
    provenance = data.provenance
    assert provenance["source"] == "tfds"
    assert provenance["splits"] == {"train": "train", "test": "validation"}
    assert provenance["carve_out"] is None
    assert provenance["tfds_splits"] == {"train": 400, "validation": 100}
    assert provenance["version"] == "1.0.0"
    assert provenance["data_dir"] == tfds_dir
    assert provenance["location"].startswith(tfds_dir)
    assert _examples(_load("tfds:tiny_reviews:1.0.0", tfds_dir)) == (train, test)


def test_pair_and_multiple_choice_layouts(tfds_dir):
    rows = {r["hypothesis"]: r for split in ROWS["tiny_reviews"].values()
            for r in split}
    data = _load("tfds:tiny_reviews", tfds_dir, text_pair="hypothesis")
    for text, label in sum(_examples(data), []):
        row = rows[text.split("\n\n")[1]]
        assert (text, label) == (f"{row['text']}\n\n{row['hypothesis']}",
                                 row["label"])
    data = _load("tfds:tiny_reviews", tfds_dir, text="hypothesis",
                 choices="options", label="right")
    for text, label in sum(_examples(data), []):
        question, shown = text[len("Q: "):].split(" A: ")
        row = rows[question]
        assert shown in row["options"]
        assert (shown == row["options"][row["right"]]) == bool(label)


def test_a_builder_without_a_test_split_is_carved(tfds_dir):
    data = _load("tfds:tiny_train_only", tfds_dir, group="topic")
    carve = data.provenance["carve_out"]
    assert carve["from_split"] == "train" and carve["rows_read"] == 300
    assert "validation or test" in carve["reason"]
    topic = {r["text"]: r["topic"] for r in ROWS["tiny_train_only"]["train"]}
    train, test = _examples(data)
    assert not ({topic[t] for t, _ in train} & {topic[t] for t, _ in test})


def _main(tmp_path, *args):
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "w2s_jax.main", "--config=configs/smoke.py",
         f"--workdir={work}", *args], capture_output=True, text=True,
        cwd=REPO, timeout=600)
    return proc, work


@pytest.mark.parametrize("args, fragments", [
    (["--config.task=tfds:no_such_builder"],
     ["TFDS has no builder 'no_such_builder'", "tfds.list_builders()"]),
    (["--config.task=tfds:tiny_reviews", "--config.task_fields.text=review"],
     ["tfds:tiny_reviews split train, record 0: no field 'review'",
      "hypothesis, label, options, right, text, topic",
      "--config.task_fields.text=<column>"]),
])
def test_bad_task_from_the_command_line(tmp_path, tfds_dir, args, fragments):
    """One error line, exit status 1, no traceback, nothing written."""
    proc, work = _main(tmp_path, f"--config.tfds_data_dir={tfds_dir}", *args)
    errors = [line for line in proc.stderr.splitlines()
              if line.startswith("error: ")]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not work.exists()


def test_a_dataset_that_cannot_be_prepared(tmp_path, tfds_dir):
    """An unprepared dataset is prepared; a failure (here: offline) names
    the builder, the data dir, the cause and how to prepare it."""
    script = ("from w2s_jax.core.errors import DataError\n"
              "from w2s_jax.data import splits\n"
              "import tiny_builders\n"
              "try:\n"
              "    splits.load_task('tfds:tiny_offline', data_dir=None, seed=0,"
              " n_train=None, n_test=None, task_fields={}, tfds_data_dir="
              f"{str(tmp_path)!r})\n"
              "except DataError as err:\n"
              "    print(err)\n")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=os.path.join(
            os.path.dirname(tfds_dir), "module")), check=True)
    message = proc.stdout.strip()
    for fragment in ("tiny_offline is not prepared in", str(tmp_path),
                     "ConnectionError: no network here",
                     "download_and_prepare(file_format='array_record')",
                     "--config.tfds_data_dir="):
        assert fragment in message, message


def test_a_tfds_task_runs_end_to_end(tmp_path, tfds_dir):
    """The overrides of test_user_tasks' end-to-end run, on the command line."""
    proc, work = _main(
        tmp_path, "--config.task=tfds:tiny_reviews",
        f"--config.tfds_data_dir={tfds_dir}", "--config.n_train=256",
        "--config.n_test=64", "--config.max_ctx=32",
        "--config.weak.name=bow-tfidf", "--config.weak.epochs=4",
        "--config.strong.name=tiny-gpt2-random",
        "--config.strong.mode=features", "--config.strong.epochs=2",
        "--config.train.epochs=2", "--config.train.log_every=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = glob.glob(str(work / "results" / "*.json"))
    with open(path) as f:
        results = json.load(f)
    assert results["data"]["source"] == "tfds"
    assert results["data"]["splits"] == {"train": "train",
                                         "test": "validation"}
    # A word decides the label: bag-of-words learns it.
    assert results["gold_test"]["weak"]["accuracy"] > 0.9
