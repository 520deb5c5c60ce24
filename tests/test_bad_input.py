"""Bad input stops before any work: one `error:` line naming the bad thing,
exit status 2 (usage) or 1 (data, models, hub, workdir), no traceback, and
nothing new in the workdir.

The table runs `python -m w2s_jax.main` once per case (the smoke config with
small overrides, hand-written mirror rows and model directories in a tmp
dir, never the hub), all cases at once in a few parallel processes; each
case is then its own test.
"""
import concurrent.futures
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from w2s_jax import config as config_lib
from w2s_jax import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# Root ignores permission bits: a read-only place then has to be a kernel one.
ROOT_READ_ONLY = "/sys/kernel"


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


# ---- the table: `python -m w2s_jax.main` on bad input ----

@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    args: tuple  # after the config and workdir flags; "{lab}" = the lab dir
    status: int  # 2 usage, 1 the rest
    names: tuple  # fragments the error line must hold
    config: str = "configs/smoke.py"  # "" = no --config flag
    # "{work}" = a fresh empty directory; None = no --workdir flag.
    workdir: str | None = "{work}"
    unset: tuple = ()  # environment variables to remove
    warns: tuple = ()  # fragments stderr must hold besides the error line


def _c(id, args, status, *names, **fields):
    return Case(id, tuple(args.split()) if isinstance(args, str) else args,
                status, names, **fields)


SMALL = "--config.n_train=64 --config.n_test=32"
GOOD = "--config.data_dir={lab}/mirrors/good " + SMALL
MODEL = "--config.strong.name={lab}/models/"


def _data(name):
    return f"--config.data_dir={{lab}}/mirrors/{name} {SMALL}"


CASES = [
    # Config values and keys (usage, 2).
    _c("unknown-task", f"{GOOD} --config.task=sst3", 2,
       "config.task='sst3'", "sst2", "boolq"),
    _c("unknown-model", f"{GOOD} --config.strong.name=gpt5", 2,
       "config.strong.name='gpt5'", "tiny-gpt2-random", "gpt2-medium"),
    _c("unknown-loss", f"{GOOD} --config.loss=hinge", 2,
       "config.loss='hinge'", "logconf", "xent"),
    _c("unknown-loss-in-losses", f"{GOOD} --config.loss=xent "
       "--config.losses=xent,hinge", 2, "config.losses='hinge'", "logconf"),
    _c("unknown-overlength", f"{GOOD} --config.overlength=chop", 2,
       "config.overlength='chop'", "drop, truncate"),
    _c("unknown-recipe", f"{GOOD} --config.recipe=distill", 2,
       "config.recipe='distill'", "bootstrap", "saliency", "w2s"),
    _c("unknown-weak-labels", f"{GOOD} --config.weak_labels=fuzzy", 2,
       "config.weak_labels='fuzzy'", "soft", "hard"),
    _c("unknown-mode", f"{GOOD} --config.strong.mode=frozen", 2,
       "config.strong.mode='frozen'", "finetune", "features"),
    _c("unknown-compute-dtype", f"{GOOD} --config.compute_dtype=float8", 2,
       "config.compute_dtype='float8'", "bfloat16"),
    _c("unknown-matmul-precision", f"{GOOD} --config.matmul_precision=tf32", 2,
       "config.matmul_precision='tf32'", "default, bfloat16"),
    _c("store-not-a-bucket", f"{GOOD} --config.store=s3://b/grid", 2,
       "config.store='s3://b/grid' is not a bucket URL", "gs://<bucket>/<path>",
       "'' for the workdir itself"),
    _c("unknown-config-key", f"{GOOD} --config.train.epoch=3", 2,
       "unknown config key config.train.epoch", "epochs"),
    _c("misspelt-loss-params-key", f"{GOOD} --config.loss_params.alpha_maxx=0.3",
       2, "config.loss_params.alpha_maxx", "alpha_max"),
    _c("loss-params-key-of-another-loss", f"{GOOD} --config.loss_params.radius=0.2",
       2, "config.loss_params.radius", "'logconf'", "window"),
    _c("loss-params-out-of-range", f"{GOOD} --config.loss_params.alpha_max=2.0",
       2, "config.loss_params.alpha_max=2.0", "out of range"),
    _c("loss-params-bad-choice", f"{GOOD} --config.loss_params.schedule=linar",
       2, "config.loss_params.schedule='linar'", "linear, release_jump"),
    _c("seeds-not-integers", f"{GOOD} --config.seeds=0,x", 2,
       "config.seeds='0,x'", "'x'", "integer"),
    _c("seed-with-seeds", f"{GOOD} --config.seeds=0,1 --config.seed=3", 2,
       "config.seed=3", "config.seeds='0,1'", "--config.seed=0"),
    _c("loss-with-losses", f"{GOOD} --config.losses=xent,kl", 2,
       "config.loss='logconf'", "config.losses='xent,kl'", "--config.loss=xent"),
    _c("max-ctx-1", f"{GOOD} --config.max_ctx=1", 2, "config.max_ctx=1", "8"),
    _c("n-train-zero", f"{GOOD} --config.n_train=0", 2,
       "config.n_train must be a positive integer", "0"),
    _c("batch-not-multiple-of-minibatch",
       f"{GOOD} --config.train.minibatch_size=5", 2,
       "config.train.batch_size (32)", "config.train.minibatch_size (5)"),
    _c("bad-early-stopping", f"{GOOD} --config.early_stopping.val_fraction=1.5",
       2, "val_fraction", "1.5"),
    _c("bootstrap-with-two-models", f"{GOOD} --config.recipe=bootstrap", 2,
       "config.recipe='bootstrap'", "at least 3 models"),
    _c("saliency-layers-not-integers",
       f"{GOOD} --config.recipe=saliency --config.saliency.layers=3,top", 2,
       "config.saliency.layers='3,top'", "'top'"),
    _c("generative-text-unknown", f"{GOOD} --config.generative.epochs=1 "
       "--config.generative.text=labels", 2, "config.generative.text='labels'",
       "pool", "completions"),
    _c("generative-on-an-encoder", f"{GOOD} --config.generative.epochs=1 "
       "--config.weak.name=minilm-l3 --config.strong.name=minilm-l6", 2,
       "config.generative.epochs=1", "'minilm-l6'", "bert", "smollm2-135m"),
    _c("generative-completions-without-pairs", f"{GOOD} "
       "--config.generative.epochs=1 --config.generative.text=completions", 2,
       "config.generative.text='completions'", "anthropic_hh", "'sst2'"),
    # Flags and config files (usage, 2).
    _c("flag-value-not-an-int", f"{GOOD} --config.train.epochs=abc", 2,
       "--config.train.epochs=abc", "int"),
    _c("unknown-flag", f"{GOOD} --bogus=1", 2, "bogus"),
    _c("stray-argument", f"{GOOD} extra", 2, "unexpected arguments", "extra"),
    _c("no-workdir-flag", GOOD, 2, "--workdir", workdir=None),
    _c("config-file-missing", "", 2, "{lab}/configs/absent.py",
       "does not exist", "no_get_config.py", config="{lab}/configs/absent.py"),
    _c("config-file-without-get-config", "", 2,
       "{lab}/configs/no_get_config.py", "defines no get_config()",
       config="{lab}/configs/no_get_config.py"),
    _c("config-file-syntax-error", "", 2, "{lab}/configs/syntax_error.py",
       "line 2", config="{lab}/configs/syntax_error.py"),
    # What needs the data to see (usage, 2).
    _c("max-ctx-truncates-most-to-nothing",
       f"{_data('long')} --config.max_ctx=8", 2,
       "config.max_ctx=8", "100% of the train examples", "under a tenth",
       "tiny-gpt2-random"),
    _c("max-ctx-drops-most", f"{_data('long')} --config.max_ctx=16 "
       "--config.overlength=drop", 2,
       "config.max_ctx=16", "drops 100% of the train examples"),
    _c("batch-larger-than-a-half", f"{GOOD} --config.train.batch_size=64", 2,
       "config.train.batch_size=64", "64 examples"),
    _c("n-train-beyond-the-data-warns", f"{GOOD} --config.n_train=1000 "
       "--config.train.batch_size=64", 2, "config.train.batch_size=64",
       warns=("has 80 examples", "config.n_train=1000", "using all 80")),
    # Data (1).
    _c("mirror-without-the-task", f"{GOOD} --config.task=boolq", 1,
       "'boolq'", "{lab}/mirrors/good", "sst2"),
    _c("mirror-dir-missing", _data("absent"), 1, "{lab}/mirrors/absent"),
    _c("mirror-task-without-jsonl", _data("no_jsonl"), 1,
       "{lab}/mirrors/no_jsonl/sst2", "README.txt"),
    _c("empty-mirror-file", _data("empty"), 1,
       "{lab}/mirrors/empty/sst2/train.jsonl is empty"),
    _c("malformed-json-line", _data("malformed"), 1,
       "{lab}/mirrors/malformed/sst2/train.jsonl, line 5", "not valid JSON"),
    _c("json-line-not-an-object", _data("array_row"), 1,
       "{lab}/mirrors/array_row/sst2/validation.jsonl, line 3", "not an object"),
    _c("rows-without-the-label", _data("no_label"), 1,
       "{lab}/mirrors/no_label/sst2/train.jsonl, line 1", "'label'"),
    _c("label-not-a-number", _data("text_label"), 1,
       "{lab}/mirrors/text_label/sst2/train.jsonl, line 2", "'positive'"),
    _c("label-out-of-range", _data("label_two"), 1,
       "{lab}/mirrors/label_two/sst2/train.jsonl, line 3", "0 or 1"),
    _c("one-class-only", _data("one_class"), 1, "sst2", "2 classes"),
    _c("no-hub-design-card-command", "", 1, "'sciq'", "W2S_DATA_DIR",
       "config.weak.name='gpt2'", "local checkpoint directory",
       config="configs/nlp_aux.py", unset=("W2S_DATA_DIR",)),
    # Models (1).
    _c("hub-model-offline", f"{GOOD} --config.task=sst2", 1,
       "config.weak.name='gpt2'", "HF_HUB_OFFLINE=1", "--config.weak.name",
       "minilm-l6", config="configs/nlp_aux.py"),
    _c("unknown-hub-id-offline", f"{GOOD} --config.strong.name=nobody/no-such-model",
       1, "config.strong.name='nobody/no-such-model'", "Hugging Face cache"),
    _c("empty-model-dir", f"{GOOD} {MODEL}empty", 1,
       "{lab}/models/empty is empty", "config.json", "model.safetensors"),
    _c("pickle-only-model-dir", f"{GOOD} {MODEL}pickle_only", 1,
       "refusing to unpickle {lab}/models/pickle_only/pytorch_model.bin",
       "safe_serialization=True"),
    _c("truncated-safetensors", f"{GOOD} {MODEL}truncated", 1,
       "{lab}/models/truncated/model.safetensors is truncated"),
    _c("safetensors-garbage", f"{GOOD} {MODEL}garbage", 1,
       "{lab}/models/garbage/model.safetensors", "not a safetensors file"),
    _c("safetensors-header-not-json", f"{GOOD} {MODEL}bad_header", 1,
       "{lab}/models/bad_header/model.safetensors", "header is not valid JSON"),
    _c("model-dir-without-weights", f"{GOOD} {MODEL}no_weights", 1,
       "{lab}/models/no_weights has no weights", "model.safetensors"),
    _c("model-dir-without-config", f"{GOOD} {MODEL}no_config", 1,
       "{lab}/models/no_config", "no config.json"),
    _c("model-config-not-json", f"{GOOD} {MODEL}config_not_json", 1,
       "{lab}/models/config_not_json/config.json", "not a valid JSON"),
    _c("unsupported-model-type", f"{GOOD} {MODEL}t5", 1,
       "{lab}/models/t5/config.json", "model_type='t5'", "gpt2"),
    _c("shard-missing", f"{GOOD} {MODEL}missing_shard", 1,
       "model-00002-of-00002.safetensors", "{lab}/models/missing_shard"),
    _c("no-tokenizer-files", f"{GOOD} {MODEL}no_tokenizer", 1,
       "{lab}/models/no_tokenizer", "no tokenizer files"),
    # Workdir (1).
    _c("workdir-is-a-file", GOOD, 1, "--workdir={lab}/a_file", "is a file",
       workdir="{lab}/a_file"),
    _c("workdir-under-a-file", GOOD, 1, "--workdir={lab}/a_file/run",
       "cannot be created", workdir="{lab}/a_file/run"),
    _c("workdir-empty-string", GOOD, 1, "--workdir is empty", workdir=""),
    _c("workdir-read-only", GOOD, 1, "is not writable",
       workdir=ROOT_READ_ONLY if IS_ROOT else "{lab}/read_only"),
    _c("workdir-in-a-read-only-dir", GOOD, 1, "cannot be created",
       "is not writable", workdir=(ROOT_READ_ONLY + "/w2s-run" if IS_ROOT
                                   else "{lab}/read_only/run")),
]


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(row if isinstance(row, str) else json.dumps(row) + "\n"
                            for row in rows))


def _sst2(directory, train, validation=None):
    _write_jsonl(directory / "sst2" / "train.jsonl", train)
    _write_jsonl(directory / "sst2" / "validation.jsonl",
                 SST2_ROWS if validation is None else validation)


def _safetensors(path, n=16):
    import safetensors.numpy
    safetensors.numpy.save_file({"w": np.arange(n, dtype=np.float32)}, str(path))


def _model_dir(root, name, *, config=True, weights=True, tokenizer=True):
    directory = root / name
    directory.mkdir(parents=True)
    if config:
        (directory / "config.json").write_text(json.dumps(
            {"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2,
             "vocab_size": 50, "n_positions": 16}))
    if weights:
        _safetensors(directory / "model.safetensors")
    if tokenizer:
        (directory / "vocab.json").write_text("{}")
        (directory / "merges.txt").write_text("")
    return directory


def _build_lab(lab):
    mirrors, models, configs = lab / "mirrors", lab / "models", lab / "configs"
    _sst2(mirrors / "good", SST2_ROWS)
    long_rows = [{"sentence": "a long sentence " * 12 + str(i), "label": i % 2}
                 for i in range(80)]
    _sst2(mirrors / "long", long_rows, long_rows)
    (mirrors / "no_jsonl" / "sst2").mkdir(parents=True)
    (mirrors / "no_jsonl" / "sst2" / "README.txt").write_text("nothing here")
    _sst2(mirrors / "empty", [])
    _sst2(mirrors / "malformed", SST2_ROWS[:4] + ['{"sentence": "x", "label": \n']
          + SST2_ROWS[4:])
    _sst2(mirrors / "array_row", SST2_ROWS,
          SST2_ROWS[:2] + ['["text", 1]\n'] + SST2_ROWS[2:])
    _sst2(mirrors / "no_label", [{"sentence": r["sentence"]} for r in SST2_ROWS])
    _sst2(mirrors / "text_label", SST2_ROWS[:1] + [{"sentence": "y", "label": "positive"}]
          + SST2_ROWS[1:])
    _sst2(mirrors / "label_two", SST2_ROWS[:2] + [{"sentence": "y", "label": 2}]
          + SST2_ROWS[2:])
    one = [{"sentence": f"text {i}", "label": 1} for i in range(80)]
    _sst2(mirrors / "one_class", one, one)

    (models / "empty").mkdir(parents=True)
    (models / "pickle_only").mkdir()
    (models / "pickle_only" / "pytorch_model.bin").write_bytes(b"never unpickled")
    truncated = _model_dir(models, "truncated") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-10])
    (_model_dir(models, "garbage") / "model.safetensors").write_bytes(
        b"\xff" * 72)
    (_model_dir(models, "bad_header") / "model.safetensors").write_bytes(
        (5).to_bytes(8, "little") + b"{nope" + b"\0" * 8)
    _model_dir(models, "no_weights", weights=False)
    _model_dir(models, "no_config", config=False)
    (_model_dir(models, "config_not_json") / "config.json").write_text("{'x': 1")
    (_model_dir(models, "t5") / "config.json").write_text('{"model_type": "t5"}')
    sharded = _model_dir(models, "missing_shard", weights=False)
    _safetensors(sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "model-00001-of-00002.safetensors",
                        "v": "model-00002-of-00002.safetensors"}}))
    _model_dir(models, "no_tokenizer", tokenizer=False)

    configs.mkdir()
    (configs / "no_get_config.py").write_text(
        "from w2s_jax.config import base_config\n\nconfig = base_config()\n")
    (configs / "syntax_error.py").write_text(
        "def get_config():\n    return base_config(\n")
    (lab / "a_file").write_text("not a directory")
    (lab / "read_only").mkdir()
    os.chmod(lab / "read_only", 0o555)
    (lab / "hf_home").mkdir()  # an empty Hugging Face cache


def _listing(path):
    """Everything under path (relative names), or None if it is absent."""
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return ["<file>", os.path.getsize(path)]
    if path.startswith("/sys") or path.startswith("/proc"):
        return sorted(os.listdir(path))
    return sorted(os.path.relpath(os.path.join(root, name), path)
                  for root, dirs, files in os.walk(path)
                  for name in dirs + files)


def _run_case(case, lab):
    fill = lambda text: text.replace("{lab}", str(lab))  # noqa: E731
    cmd = [sys.executable, "-m", "w2s_jax.main"]
    if case.config:
        cmd.append(f"--config={fill(case.config)}")
    workdir = None
    if case.workdir is not None:
        workdir = (str(lab / "work" / case.id) if case.workdir == "{work}"
                   else fill(case.workdir))
        if case.workdir == "{work}":
            os.makedirs(workdir)
        cmd.append(f"--workdir={workdir}")
    cmd += [fill(arg) for arg in case.args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(lab / "hf_home"), TOKENIZERS_PARALLELISM="false")
    for name in ("W2S_DATA_DIR", *case.unset):
        env.pop(name, None)
    before = _listing(workdir) if workdir else None
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    after = _listing(workdir) if workdir else None
    return proc, before, after


@pytest.fixture(scope="module")
def table(request, tmp_path_factory):
    """Runs the selected cases, a few at a time; id -> (proc, before, after)."""
    lab = tmp_path_factory.mktemp("bad_input")
    _build_lab(lab)
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if getattr(item, "originalname", "") == "test_bad_input_table"
              and hasattr(item, "callspec")}
    cases = [case for case in CASES if case.id in wanted]
    workers = max(2, min(4, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = dict(zip([c.id for c in cases],
                           pool.map(lambda c: _run_case(c, lab), cases)))
    yield lab, results
    os.chmod(lab / "read_only", 0o755)


def test_the_table_is_big_and_unique():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_table(case, table):
    if IS_ROOT and ROOT_READ_ONLY in (case.workdir or "") and not os.path.isdir(
            ROOT_READ_ONLY):
        pytest.skip(f"running as root without {ROOT_READ_ONLY}")
    lab, results = table
    proc, before, after = results[case.id]
    output = proc.stdout + proc.stderr
    where = f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert "Traceback" not in output, where
    assert proc.returncode == case.status, where
    errors = [line for line in proc.stderr.splitlines()
              if line.startswith("error: ")]
    assert len(errors) == 1, where
    for fragment in case.names:
        assert fragment.replace("{lab}", str(lab)) in errors[0], where
    for fragment in case.warns:
        assert fragment in proc.stderr, where
    assert after == before, f"the workdir changed: {before} -> {after}"
