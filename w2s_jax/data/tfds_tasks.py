"""A task from TensorFlow Datasets, read without TensorFlow.

`--config.task=tfds:<builder>[/<config>][:<version>]` (e.g. tfds:imdb_reviews,
tfds:glue/sst2) reads the dataset's array_record files through TFDS's data
source API, which needs no TensorFlow. `config.task_fields` names its
features as it names a file's columns, and rows are formatted and checked
as a file's are (data/user_tasks.py); a bad one is named as
"tfds:<name> split <split>, record <i>", i the index into that split's data
source.

The train pool is the "train" split; the gold test set is "validation" where
the builder has one (GLUE's test labels are -1), else "test", else it is
carved out of train as a file task's is. `config.tfds_data_dir` ("" = TFDS's
default, $TFDS_DATA_DIR or ~/tensorflow_datasets) holds the prepared files;
a dataset not prepared there is prepared (download_and_prepare) first.
"""
from __future__ import annotations

import numpy as np

from w2s_jax.core.errors import DataError
from w2s_jax.data import user_tasks

PREFIX = "tfds:"
TRAIN_SPLIT = "train"
TEST_SPLITS = ("validation", "test")


def is_tfds_task(name: str) -> bool:
    return name.startswith(PREFIX)


def open_task(name: str, fields: dict, data_dir: str | None):
    """(spec, plan, read): the task's TaskSpec, its split plan and
    provenance, and read(split) -> that split's checked rows."""
    builder = _builder(name, data_dir)
    have = {split: info.num_examples
            for split, info in builder.info.splits.items()}
    if TRAIN_SPLIT not in have:
        raise DataError(f"config.task={name!r}: the dataset has no "
                        f"{TRAIN_SPLIT!r} split for the train pool; it has "
                        f"{', '.join(sorted(have))}")
    test = next((split for split in TEST_SPLITS if split in have), None)
    reference = name[len(PREFIX):].split(":")[0]  # without the version
    spec = user_tasks.layout_spec(f"tfds-{reference.replace('/', '-')}",
                                  str(builder.data_dir), TRAIN_SPLIT, fields)
    plan = {"source": "tfds", "location": str(builder.data_dir),
            "builder": reference, "version": str(builder.info.version),
            "data_dir": data_dir, "tfds_splits": have,  # None: TFDS default
            "splits": {"train": TRAIN_SPLIT, "test": test or TRAIN_SPLIT},
            "carve_out": None if test else {
                "from_split": TRAIN_SPLIT,
                "reason": f"the dataset has no {' or '.join(TEST_SPLITS)} "
                          f"split; it has {', '.join(sorted(have))}"}}

    def read(split: str) -> list[dict]:
        rows = _read_rows(name, builder, split)
        user_tasks.check_rows(f"{name} split {split}", rows, fields)
        return rows

    return spec, plan, read


def _builder(name: str, data_dir: str | None):
    """The dataset's builder, prepared; every failure is one DataError."""
    # Imported here: only a tfds: task pays for importing TFDS.
    import tensorflow_datasets as tfds

    reference = name[len(PREFIX):]
    where = data_dir or "TFDS's default data dir ($TFDS_DATA_DIR or " \
                        "~/tensorflow_datasets)"
    try:
        # Falls back to the prepared files when no builder class of that
        # name is registered, so a dataset built elsewhere reads too.
        builder = tfds.builder(reference, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"config.task={name!r}: TFDS has no builder "
                        f"{reference!r} and {where} holds no prepared "
                        f"dataset of that name; tfds.list_builders() lists "
                        f"the builders") from None
    except Exception as err:  # a bad config or version, a broken builder
        raise DataError(f"config.task={name!r}: cannot open builder "
                        f"{reference!r} in {where}: {_cause(err)}") from None
    if not builder.is_prepared():
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as err:  # offline, needs TensorFlow, ...
            raise DataError(
                f"config.task={name!r}: {reference} is not prepared in "
                f"{where} and preparing it failed ({_cause(err)}); prepare "
                f"it where it can be downloaded (and with TensorFlow if the "
                f"builder needs it): python -c \"import tensorflow_datasets "
                f"as tfds; tfds.builder('{reference}', data_dir='<dir>')"
                f".download_and_prepare(file_format='array_record')\", then "
                f"pass --config.tfds_data_dir=<dir>") from None
    return builder


def _read_rows(name: str, builder, split: str) -> list[dict]:
    """A split's records as rows: plain Python values plus their place."""
    try:
        source = builder.as_data_source(split)
        records = source.__getitems__(range(len(source)))
    except Exception as err:  # e.g. files prepared as tfrecord
        raise DataError(
            f"config.task={name!r}: cannot read split {split!r} from "
            f"{builder.data_dir}: {_cause(err)}; reading needs the dataset "
            f"prepared with file_format='array_record'") from None
    return [{**_plain(record), user_tasks.WHERE:
             f"{name} split {split}, record {i}"}
            for i, record in enumerate(records)]


def _plain(value):
    """Bytes as str and numpy values as Python ones: the values a file
    task's row holds, which user_tasks checks and formats."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, np.ndarray)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _cause(err: Exception) -> str:
    """The exception in one line: TFDS's messages run to many."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
