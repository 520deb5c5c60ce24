"""Training curves: TensorBoard event files (read back here byte by byte,
without TensorFlow or TensorBoard) and W&B, neither needed to run."""
import glob
import logging
import os
import struct
import sys
import types

import numpy as np
import pytest

from w2s_jax import run
from w2s_jax.core import metric_writers
from test_recipes import _bow, _config, _frozen, _stage, mirror  # noqa: F401

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _events(path):
    """Every Event of a TFRecord file: 8-byte length, its 4-byte masked
    CRC-32C, the payload, the payload's masked CRC-32C."""
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        payload = data[pos + 12:pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert header_crc == _masked_crc(header)
        assert len(payload) == length and payload_crc == _masked_crc(payload)
        event = event_pb2.Event()
        event.ParseFromString(payload)
        out.append(event)
        pos += 16 + length
    return out


def _scalars(log_dir):
    """{tag: {step: value}} over every event file of `log_dir`."""
    files = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    assert files, f"no event files in {log_dir}"
    found = {}
    for path in sorted(files):
        for event in _events(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def _stage_dirs(results):
    return {name: os.path.basename(stage["path"])
            for name, stage in results["stages"].items()}


def test_event_files_hold_each_stages_loss_curve_and_evaluations(mirror, tmp_path):
    config = _config(mirror, _bow(), _frozen(), loss="xent",
                     train__log_every=4, early_stopping__eval_every=5)
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    dirs = _stage_dirs(results)
    # One TensorBoard run per trained stage, named like its stage directory.
    assert sorted(os.listdir(os.path.join(workdir, "tensorboard"))) == \
        sorted(dirs.values())
    for name, dirname in dirs.items():
        record, arrays = _stage(workdir, results, name)
        found = _scalars(os.path.join(workdir, "tensorboard", dirname))
        curve, total = record["loss_curve"], record["steps"]
        logged = sorted({1, *range(4, total + 1, 4), total})
        assert sorted(found["train/loss"]) == logged
        for step in logged:  # stored as float32, as the step computed it
            assert found["train/loss"][step] == np.float32(curve[step - 1]), \
                (name, step)
        # The cosine schedule written out: optax's step count is step - 1.
        peak = record["spec"]["train"]["lr"]
        for step in logged:
            expected = peak * 0.5 * (1 + np.cos(np.pi * (step - 1) / total))
            assert found["train/lr"][step] == pytest.approx(expected, rel=1e-5)
        assert sorted(found["train/examples_per_s"]) == logged[1:]
        assert all(v > 0 for v in found["train/examples_per_s"].values())
        # The early-stopping evaluations, from the stored predictions.
        labels = np.where(arrays["test_correct"], arrays["test_hard"],
                          1 - arrays["test_hard"])
        assert sorted(found["eval/test_accuracy"]) == list(arrays["eval_steps"])
        for step, probs in zip(arrays["eval_steps"], arrays["eval_test_probs"]):
            assert found["eval/test_accuracy"][int(step)] == \
                np.float32(np.mean(probs.argmax(-1) == labels))
        assert sorted(found["eval/val_accuracy"]) == list(arrays["eval_steps"])


@pytest.mark.parametrize("why", ["off", "tensorboardX missing"])
def test_no_event_files_without_tensorboard(mirror, tmp_path, monkeypatch,
                                            caplog, why):
    if why == "off":
        config = _config(mirror, _bow(), _frozen(), logs__tensorboard=False)
    else:  # on, but not installed: the console stays as it was
        config = _config(mirror, _bow(), _frozen())
        monkeypatch.setitem(sys.modules, "tensorboardX", None)
        monkeypatch.setattr(metric_writers, "_reported", set())
    with caplog.at_level(logging.WARNING):
        results = run.run(config, str(tmp_path))
    assert set(results["stages"]) == {"weak", "w2s", "ceiling"}
    assert not os.path.exists(tmp_path / "tensorboard")
    assert not [r for r in caplog.records if "tensorboard" in r.getMessage().lower()]


def test_wandb_enabled_but_not_installed_warns_once_and_the_run_finishes(
        mirror, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails
    monkeypatch.setattr(metric_writers, "_reported", set())
    config = _config(mirror, _bow(), _frozen(), logs__wandb=True)
    with caplog.at_level(logging.WARNING):
        results = run.run(config, str(tmp_path))
    warnings = [r for r in caplog.records if "wandb" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert set(results["stages"]) == {"weak", "w2s", "ceiling"}
    # TensorBoard is unaffected.
    assert len(os.listdir(tmp_path / "tensorboard")) == 3


def test_wandb_run_per_stage_gets_the_same_scalars(mirror, tmp_path, monkeypatch):
    """A stand-in wandb module: what the W&B writer calls, and with what."""
    runs = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.init, self.logged, self.finished = kwargs, [], False

        def log(self, values, step):
            self.logged.append((step, dict(values)))

        def finish(self):
            self.finished = True

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    config = _config(mirror, _bow(), _frozen(), loss="xent",
                     logs__wandb=True, logs__wandb_project="proj",
                     train__log_every=4)
    workdir = str(tmp_path)
    results = run.run(config, workdir)
    dirs = _stage_dirs(results)
    assert sorted(r.init["name"] for r in runs) == sorted(dirs.values())
    for fake in runs:
        assert fake.init["project"] == "proj" and fake.finished
        name = fake.init["config"]["stage"]
        record, _ = _stage(workdir, results, name)
        losses = {step: v["train/loss"] for step, v in fake.logged
                  if "train/loss" in v}
        assert losses == {s: record["loss_curve"][s - 1] for s in losses}
        assert max(losses) == record["steps"]


def test_other_processes_write_nothing(tmp_path, monkeypatch):
    from w2s_jax.core import distributed
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    from w2s_jax import config as config_lib
    logs = config_lib.base_config().logs
    writer = metric_writers.for_stage(logs, str(tmp_path), "weak", "abc")
    writer.scalars(1, {"train/loss": 1.0})
    writer.close()
    assert os.listdir(tmp_path) == []
