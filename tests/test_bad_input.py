"""Bad input stops before any training, naming the bad value and the choices."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from w2s_jax import config as config_lib
from w2s_jax import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_config(data_dir):
    spec = importlib.util.spec_from_file_location(
        "smoke", os.path.join(REPO, "configs", "smoke.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data_dir = str(data_dir)
    config.n_train, config.n_test = 64, 32
    return config


def _mirror(tmp_path, task, rows):
    directory = tmp_path / "mirror" / task
    directory.mkdir(parents=True)
    for split in ("train", "validation"):
        with open(directory / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return tmp_path / "mirror"


def _expect_error(config, workdir, *fragments):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        run.run(config, str(workdir))
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    assert not os.path.exists(os.path.join(workdir, "stages")), "trained anyway"


SST2_ROWS = [{"sentence": f"text {i}", "label": i % 2, "idx": i} for i in range(80)]


def test_unknown_task(tmp_path):
    config = _smoke_config(_mirror(tmp_path, "sst2", SST2_ROWS))
    config.task = "sst3"
    _expect_error(config, tmp_path / "w", "'sst3'", "sst2", "sciq", "boolq")


def test_unknown_model(tmp_path):
    config = _smoke_config(_mirror(tmp_path, "sst2", SST2_ROWS))
    config.strong.name = "gpt5"
    _expect_error(config, tmp_path / "w", "config.strong.name='gpt5'",
                  "gpt2-medium", "tiny-gpt2-random")


def test_unknown_loss(tmp_path):
    config = _smoke_config(_mirror(tmp_path, "sst2", SST2_ROWS))
    config.loss = "hinge"
    _expect_error(config, tmp_path / "w", "'hinge'", "logconf", "product",
                  "xent")


def test_unknown_config_key(tmp_path):
    config = _smoke_config(_mirror(tmp_path, "sst2", SST2_ROWS))
    config.train.unlock()
    config.train.epoch = 3  # typo for epochs
    _expect_error(config, tmp_path / "w", "config.train.epoch", "epochs")


def test_unknown_config_key_on_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "w2s_jax.main", "--config=configs/smoke.py",
         f"--workdir={tmp_path}", "--config.train.epoch=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "unknown config key config.train.epoch" in proc.stderr
    assert "epochs" in proc.stderr
    assert not os.path.exists(tmp_path / "stages")


def test_mirror_without_the_task(tmp_path):
    config = _smoke_config(_mirror(tmp_path, "sst2", SST2_ROWS))
    config.task = "boolq"
    _expect_error(config, tmp_path / "w", "boolq", "sst2")


def test_one_class_left_after_filtering(tmp_path):
    rows = [{"sentence": f"text {i}", "label": 1, "idx": i} for i in range(80)]
    config = _smoke_config(_mirror(tmp_path, "sst2", rows))
    _expect_error(config, tmp_path / "w", "sst2", "class")


def test_bad_choices_are_named():
    config = config_lib.base_config()
    config.overlength = "chop"
    with pytest.raises(ValueError, match="config.overlength='chop'.*drop, truncate"):
        config_lib.validate(config)
    config = config_lib.base_config()
    config.train.minibatch_size = 5
    with pytest.raises(ValueError, match="multiple of config.train.minibatch_size"):
        config_lib.validate(config)
