"""End to end: w2s_jax's `run.run` against the public release's way of
running the same weak-to-strong experiment (bench/release_way.py).

Both sides get the same train/test examples and token ids (w2s_jax's own
`splits.load_task` + joint tokenization via `setup.build`, the same halves
A/B), the same models, epochs, batch size, learning rates, Adam + cosine,
and train the weak, ceiling and w2s stages for xent and logconf. w2s_jax
accumulates each batch over minibatches of `--minibatch` (default 8; the
loss is still the whole batch's), where the release keeps the whole
batch's graph:

  (a) w2s_jax: `run.run(config, workdir)`, finetune mode, a fresh workdir,
      config.losses = "xent,logconf": the weak and ceiling stages are trained
      once and shared by both losses (the stage cache), training batches
      are drawn at random and packed several examples to a row
      (data/packing.py), and so are the examples predicted on, steps are
      jit compiled. 4 trainings. As `python -m w2s_jax.main` runs it (malloc's
      keep-freed-memory setting only with W2S_KEEP_HOST_MEMORY=1), but
      without mid-stage checkpoints, which the release does not write.
  (b) the release's way: PyTorch/HF, batches padded to their longest
      example, every stage retrained for every loss. 6 trainings.

Each side runs in its own subprocess (wall time includes interpreter start,
imports, model loading and, for (a), jit compilation and its stage cache
writes), reports its VmHWM (peak RSS) and counts the token slots it feeds
the model: real tokens and padded slots, train and eval separately.

    W2S_DATA_DIR=/work/shared/data python bench/e2e_vs_release.py --shape all
    python bench/e2e_vs_release.py --shape minilm --quick   # smoke check

By default each side is pinned to one core (`--cores one`: sched affinity
{last core}, torch 1 thread, XLA's pool then has 1 thread), the setting
bench/RESULTS.md 1a found to be the fair one on this shared 2-core machine;
`--cores all` gives both sides every core (torch with as many threads).
`--matmul-precision bfloat16` runs both sides' float32 models with
bfloat16 matmul operands summed in float32: (a) config.matmul_precision,
(b) torch.set_float32_matmul_precision("medium").
Benchmarks print figures; nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from timing import peak_rss_mib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SHAPES = {
    "minilm": dict(task="sst2", weak="minilm-l3", strong="minilm-l6",
                   n_train=512, n_test=256, max_ctx=64, epochs=1),
    "gpt2": dict(task="sciq", weak="tiny-gpt2-random",
                 strong="small-gpt2-random", n_train=512, n_test=256,
                 max_ctx=256, epochs=1),
}
QUICK = dict(n_train=128, n_test=64)
BATCH, EVAL_BATCH, SEED = 32, 64, 0
# w2s_jax's minibatch: each step accumulates BATCH / MINIBATCH minibatches'
# gradients. The loss is still the whole batch's (the confidence loss's
# statistics come from a no-grad pass over the whole batch), so only the
# memory changes: one minibatch's activations at a time, where the release
# keeps the whole batch's graph.
MINIBATCH = 8
LOSSES = ("xent", "logconf")


def make_config(shape: dict):
    from w2s_jax.config import base_config, model_config
    config = base_config()
    config.task = shape["task"]
    config.n_train, config.n_test = shape["n_train"], shape["n_test"]
    config.max_ctx = shape["max_ctx"]
    config.overlength = "drop"  # the release's policy
    config.weak = model_config(shape["weak"])
    config.strong = model_config(shape["strong"])
    config.losses = ",".join(LOSSES)
    config.seed = SEED
    config.train.epochs = shape["epochs"]
    config.train.batch_size = BATCH
    config.train.minibatch_size = shape.get("minibatch", MINIBATCH)
    # "pack": false in a --side-a shape: the padded, length-grouped trainer.
    config.train.pack = shape.get("pack", True)
    config.train.eval_batch_size = EVAL_BATCH
    config.matmul_precision = shape.get("matmul_precision", "default")
    config.train.log_every = 1000
    config.logs.tensorboard = False  # no event files; the release writes none
    # No checkpoints within a stage, which the release's way does not write
    # either (each save copies the train state to the host).
    config.checkpoint_every_steps = 0
    return config


# ---- side (a): w2s_jax, in a child process -----------------------------------

def side_a(shape: dict, out_path: str) -> None:
    start = time.perf_counter()
    # As `python -m w2s_jax.main` does first (w2s_jax/core/host_memory.py).
    from w2s_jax.core import host_memory
    host_memory.apply_default()
    import numpy as np
    from w2s_jax import run
    from w2s_jax.train import loop

    tokens = {"train_real": 0, "train_padded": 0, "eval_real": 0,
              "eval_padded": 0}
    original = loop._process_inputs

    def counting(make_inputs, lengths, indices, positions, rungs):
        # What goes to the device: rows = the (mini)batch or eval batch,
        # filler rows included; real tokens are the examples' lengths.
        inputs = original(make_inputs, lengths, indices, positions, rungs)
        caller = sys._getframe(1)
        if caller.f_back.f_code.co_name == "_compile_ahead":
            return inputs  # a batch built only for its shape, never run
        kind = "eval" if caller.f_code.co_name == "predict" else "train"
        mine = indices[positions[positions < len(indices)]]
        tokens[f"{kind}_real"] += int(np.sum(lengths[mine]))
        tokens[f"{kind}_padded"] += int(np.asarray(inputs[0]).size)
        return inputs

    loop._process_inputs = counting
    from w2s_jax.data import packing
    original_pack = packing.pack

    def counting_pack(ids, indices, *, rows, length, pad_id, placed=None):
        # A packed training minibatch or prediction batch
        # (loop.token_inputs calls packing.pack).
        inputs = original_pack(ids, indices, rows=rows, length=length,
                               pad_id=pad_id, placed=placed)
        frame, kind = sys._getframe(1), "train"
        while frame is not None:
            if frame.f_code.co_name == "_compile_ahead":
                return inputs  # built only for its shape, never run
            if frame.f_code.co_name == "_predict_packed":
                kind = "eval"
            frame = frame.f_back
        tokens[f"{kind}_real"] += int(sum(len(ids[i]) for i in indices))
        tokens[f"{kind}_padded"] += rows * length
        return inputs

    packing.pack = counting_pack
    # Seconds inside finetune (first step includes its jit compile) and
    # predict calls; the rest of the wall is imports, setup, stage cache.
    seconds = {"finetune": 0.0, "predict": 0.0, "finetune_calls": 0,
               "predict_calls": 0}

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[key] += time.perf_counter() - t
                seconds[f"{key}_calls"] += 1
        return wrapper

    loop.finetune = timed(loop.finetune, "finetune")
    loop.predict = timed(loop.predict, "predict")
    captured = {}
    run_one = run.run_one

    def capture(config, workdir):
        results = run_one(config, workdir)
        captured[config.loss] = results
        return results

    run.run_one = capture
    with tempfile.TemporaryDirectory() as workdir:
        run.run(make_config(shape), workdir)
    accuracy = {}
    for loss, results in captured.items():
        acc = {s: float(results["gold_test"][s]["accuracy"])
               for s in ("weak", "ceiling", "w2s")}
        gap = acc["ceiling"] - acc["weak"]
        acc["pgr"] = (acc["w2s"] - acc["weak"]) / gap if gap > 0 else None
        accuracy[loss] = acc
    with open(out_path, "w") as f:
        json.dump({"accuracy": accuracy, "tokens": tokens, "seconds": seconds,
                   "wall_s_inside": time.perf_counter() - start,
                   "peak_rss_mib": peak_rss_mib()}, f, indent=1)


# ---- the shared data, written by the parent for side (b) ----------------------

def prepare_data(shape: dict, path: str, torch_threads: int) -> dict:
    """The examples, halves and token ids of w2s_jax's own setup, as JSON
    (lists of ints: nothing executable crosses to the other process)."""
    import numpy as np
    from w2s_jax import config as config_lib
    from w2s_jax.experiment import setup
    from w2s_jax.models import registry

    config = make_config(shape)
    config_lib.validate(config)
    single = config.copy_and_resolve_references()
    single.loss, single.losses = LOSSES[0], ""
    with tempfile.TemporaryDirectory() as workdir:
        ctx = setup.build(single, workdir)
    half_a, half_b = ctx.halves()
    models = []
    for index, model in enumerate(ctx.models):
        spec = registry.MODELS.get(model.name)
        entry = {"name": model.name, "pad_id": int(model.tokenizer.pad_id),
                 "lr": float(model.default_lr),
                 "pooling": registry.FAMILIES[model.family].default_pooling,
                 "train_ids": ctx.tokens.ids[index]["train"],
                 "test_ids": ctx.tokens.ids[index]["test"]}
        if spec is not None and spec.random_config is not None:
            entry.update(kind="gpt2_random", config=spec.random_config)
        else:
            entry.update(kind="hf_dir", dir=model.checkpoint_dir)
        models.append(entry)
    data = {"models": models, "half_a": half_a, "half_b": half_b,
            "train_labels": np.asarray(ctx.train_labels),
            "test_labels": np.asarray(ctx.test_labels),
            "epochs": shape["epochs"], "batch_size": BATCH,
            "eval_batch_size": EVAL_BATCH, "seed": SEED, "losses": LOSSES,
            "torch_threads": torch_threads,
            "matmul_precision": shape.get("matmul_precision", "default")}
    with open(path, "w") as f:
        json.dump(data, f, default=lambda x: x.tolist())
    lengths = {m["name"]: [len(x) for x in m["train_ids"]] for m in models}
    return {"pool": len(ctx.train_labels), "test": len(ctx.test_labels),
            "halves": (len(half_a), len(half_b)),
            "mean_len": {k: float(np.mean(v)) for k, v in lengths.items()},
            "over_length": dict(ctx.tokens.over_length),
            "lr": {m["name"]: m["lr"] for m in models}}


# ---- the parent ---------------------------------------------------------------

def child_env(cores: str) -> tuple[dict, list[str]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("W2S_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if cores == "one":
        core = max(os.sched_getaffinity(0))
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return env, ["taskset", "-c", str(core)]
    return env, []


def timed_child(args: list[str], env, prefix: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([*prefix, sys.executable, *args], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout[-6000:])
        raise SystemExit(f"child {args[:2]} failed with rc {proc.returncode}")
    return wall


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def report(name: str, shape: dict, info: dict, a: dict, b: dict) -> str:
    lines = [f"\n### {name}: {shape['weak']} -> {shape['strong']} on "
             f"{shape['task']} (pool {info['pool']}, halves {info['halves']}, "
             f"test {info['test']}, max_ctx {shape['max_ctx']}, "
             f"{shape['epochs']} epoch(s), batch {BATCH} (w2s_jax: minibatches "
             f"of {shape.get('minibatch', MINIBATCH)}), lr {info['lr']}, "
             f"matmul precision {shape.get('matmul_precision', 'default')}, "
             f"mean train length {info['mean_len']}, dropped over-length "
             f"{info['over_length']})", "",
             "| | w2s_jax (a) | release way (b) | a/b |", "|---|---:|---:|---:|"]

    def row(label, va, vb, spec=".1f"):
        ratio = va / vb if vb else None
        lines.append(f"| {label} | {fmt(va, spec)} | {fmt(vb, spec)} | "
                     f"{fmt(ratio, '.2f')} |")

    row("wall time (s)", a["wall_s"], b["wall_s"])
    row("trainings run", 4, 6, "d")
    for kind in ("train", "eval"):
        ta, tb = a["tokens"], b["tokens"]
        row(f"{kind} real tokens", ta[f"{kind}_real"], tb[f"{kind}_real"], ",d")
        row(f"{kind} padded slots", ta[f"{kind}_padded"], tb[f"{kind}_padded"],
            ",d")
        wa = 1 - ta[f"{kind}_real"] / max(1, ta[f"{kind}_padded"])
        wb = 1 - tb[f"{kind}_real"] / max(1, tb[f"{kind}_padded"])
        lines.append(f"| {kind} padding waste | {wa:.1%} | {wb:.1%} | |")
    row("peak RSS (MiB, VmHWM)", a["peak_rss_mib"], b["peak_rss_mib"], ".0f")
    for loss in LOSSES:
        for stage in ("weak", "ceiling", "w2s", "pgr"):
            va, vb = a["accuracy"][loss][stage], b["accuracy"][loss][stage]
            label = f"{loss} PGR" if stage == "pgr" else f"{loss} {stage} test acc"
            lines.append(f"| {label} | {fmt(va)} | {fmt(vb)} | |")
    sa = a["seconds"]
    lines.append("")
    lines.append(f"w2s_jax seconds: {sa['finetune']:.1f} in "
                 f"{sa['finetune_calls']} finetune calls (jit compile "
                 f"included), {sa['predict']:.1f} in {sa['predict_calls']} "
                 f"predict calls, {a['wall_s'] - sa['finetune'] - sa['predict']:.1f}"
                 f" elsewhere (interpreter, imports, data, model loading, "
                 f"stage cache)")
    if b.get("stage_seconds"):
        lines.append("")
        lines.append("release-way stage seconds: " + ", ".join(
            f"{k} {v:.1f}" for k, v in b["stage_seconds"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="all", choices=[*SHAPES, "all"])
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes {QUICK} for a smoke check")
    parser.add_argument("--cores", default="one", choices=["one", "all"])
    parser.add_argument("--n-train", type=int, default=0,
                        help="train pool size instead of the shape's "
                             "(e.g. 4096, where training outweighs compiling)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs instead of the shape's")
    parser.add_argument("--minibatch", type=int, default=MINIBATCH,
                        help=f"w2s_jax's minibatch (a divisor of {BATCH}); "
                             f"{BATCH}: no accumulation")
    parser.add_argument("--matmul-precision", default="default",
                        choices=["default", "bfloat16"],
                        help="bfloat16: float32 models whose matmuls take "
                             "bfloat16 operands and sum in float32 on both "
                             "sides: (a) config.matmul_precision, (b) torch."
                             "set_float32_matmul_precision('medium')")
    parser.add_argument("--side-a", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side_a:
        side_a(json.loads(args.side_a[0]), args.side_a[1])
        return
    start = time.perf_counter()
    names = list(SHAPES) if args.shape == "all" else [args.shape]
    env, prefix = child_env(args.cores)
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "W2S_DATA_DIR")})
    torch_threads = 1 if args.cores == "one" else len(os.sched_getaffinity(0))
    print(f"load average at start: {os.getloadavg()}, cores: {args.cores}, "
          f"affinity {sorted(os.sched_getaffinity(0))}")
    tables = []
    for name in names:
        shape = dict(SHAPES[name], **(QUICK if args.quick else {}))
        if args.n_train:
            shape["n_train"] = args.n_train
        if args.epochs:
            shape["epochs"] = args.epochs
        shape["minibatch"] = args.minibatch
        if args.matmul_precision != "default":
            shape["matmul_precision"] = args.matmul_precision
        with tempfile.TemporaryDirectory() as tmp:
            data, out_a, out_b = (os.path.join(tmp, f) for f in
                                  ("data.json", "a.json", "b.json"))
            info = prepare_data(shape, data, torch_threads)
            wall_a = timed_child([os.path.abspath(__file__), "--side-a",
                                  json.dumps(shape), out_a], env, prefix)
            wall_b = timed_child([os.path.join(HERE, "release_way.py"), data,
                                  out_b], env, prefix)
            with open(out_a) as f:
                a = dict(json.load(f), wall_s=wall_a)
            with open(out_b) as f:
                b = dict(json.load(f), wall_s=wall_b)
        table = report(name, shape, info, a, b)
        print(table, flush=True)
        tables.append(table)
    print(f"\nwhole command: {time.perf_counter() - start:.0f} s; load average "
          f"at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
