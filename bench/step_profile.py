"""Where one w2s_jax train step spends its time on XLA:CPU, by HLO op.

Builds the same step as bench/step_vs_torch.py (make_train_step on a random
GPT-2 classifier, batch B x L, 1 device), then
  1. counts the optimized HLO's ops (dot by kind, transpose, copy, fusions);
  2. runs `--steps` steps under jax.profiler.trace, parses the trace
     (perfetto JSON) and sums each XLA:CPU op's time into a category:
       dot:fwd / dot:dX / dot:dW   weight GEMMs, by which operand is contracted;
       dot:attn                   dots with batch dims (QK^T, PV and their grads);
       dot:other                  the rest (head, ...);
       optimizer                  ops outside jvp/transpose (optax, apply_updates);
       copy / transpose / fusion:* / gather+scatter / other;
  3. reads minor page faults and user/sys time per step (getrusage).
Percentages are of the traced ops' summed time; the untraced rest of the
wall step (dispatch, gaps between thunks) is printed separately.

  taskset -c 1 python bench/step_profile.py --model gpt2 [--dump DIR]
      [--keep-host-memory off]   (glibc malloc defaults, as before issue 12)
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import statistics
import tempfile
import time

import numpy as np

import step_vs_torch


def build(name, batch, seq, unroll_dtype="float32"):
    import jax
    from w2s_jax.core import sharding
    from w2s_jax.train import losses, steps

    hf = step_vs_torch.MODELS[name]
    model = step_vs_torch.random_model(name, hf)
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal", compute_dtype=unroll_dtype)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    params = steps.init_params(module, model, head_init="normal", seed=0, mesh=mesh)
    settings = steps.TrainSettings(
        lr=1e-5, head_lr=None, batch_size=batch, minibatch_size=batch, epochs=1,
        lr_schedule="constant", warmup_steps=0, weight_decay=0.0,
        eval_batch_size=batch, max_ctx=seq, log_every=1)
    tx = steps.make_optimizer(settings)
    step_fn = steps.make_train_step(
        steps.module_forward(module), tx, losses.get_loss("xent"), {},
        mesh, param_shardings=sharding.shardings_of(params))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, hf["vocab_size"], (batch, seq)).astype(np.int32)
    targets = np.eye(2, dtype=np.float32)[rng.integers(0, 2, batch)]
    data = sharding.to_global(
        mesh, {"inputs": (ids[None], np.ones_like(ids)[None]),
               "targets": targets[None]}, 1)
    return step_fn, steps.init_state(tx, params, mesh,
                                     total_steps=10 ** 6), data


_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)\[?[^=]*?\s([\w\-]+)\(")


def parse_hlo(text):
    """name -> dict(op, shape, line, calls) for every instruction; and
    computation name -> list of instruction names."""
    instrs, comps, current = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) (?:\(|\{)", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            continue
        m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$", line)
        if not m or current is None:
            continue
        name, shape, op, rest = m.groups()
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        meta = re.search(r'op_name="([^"]*)"', rest)
        instrs[name] = dict(op=op, shape=shape, line=line.strip(), comp=current,
                            calls=calls.group(1) if calls else None,
                            op_name=meta.group(1) if meta else "")
        comps[current].append(name)
    return instrs, comps


def dot_kind(line, op_name):
    """fwd / dX / dW / attn / other, from a dot's dimension numbers."""
    if "lhs_batch_dims" in line:
        return "attn"
    lc = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    rc = re.search(r"rhs_contracting_dims=\{([\d,]*)\}", line)
    lc = [int(x) for x in lc.group(1).split(",") if x] if lc else []
    rc = [int(x) for x in rc.group(1).split(",") if x] if rc else []
    backward = "transpose(" in op_name
    if not backward:
        return "fwd"
    # autodiff's X^T . dY contracts the token dim of X (dim 0); an explicit
    # X^T (the experiment in RESULTS.md 6) runs in a platform_dependent branch.
    if (lc and lc[0] == 0) or "branch_0_fun" in op_name:
        return "dW"
    return "dX"


def categorize(instrs, comps):
    """instruction name (entry level) -> category."""
    cats = {}
    for name, ins in instrs.items():
        op, on = ins["op"], ins["op_name"]
        inner_ops = []
        if ins["calls"] and ins["calls"] in comps:
            inner_ops = [instrs[n]["op"] for n in comps[ins["calls"]]]
        phase_fwd_bwd = "jvp(" in on or "transpose(" in on
        if op == "dot" or (op == "fusion" and "dot" in inner_ops):
            line = ins["line"]
            if op == "fusion":
                line = next(instrs[n]["line"] for n in comps[ins["calls"]]
                            if instrs[n]["op"] == "dot")
                on = on or next(instrs[n]["op_name"] for n in comps[ins["calls"]]
                                if instrs[n]["op"] == "dot")
            cats[name] = "dot:" + dot_kind(line, on)
        elif on and not phase_fwd_bwd and op not in ("parameter", "tuple",
                                                     "get-tuple-element", "constant"):
            cats[name] = "optimizer"
        elif op == "copy" or (op == "fusion" and set(inner_ops) <= {
                "parameter", "copy", "bitcast", "reshape", "transpose"}
                and "copy" in inner_ops):
            cats[name] = "copy"
        elif op == "transpose" or (op == "fusion" and "transpose" in inner_ops
                                   and set(inner_ops) <= {"parameter", "transpose",
                                                          "bitcast", "reshape", "copy"}):
            cats[name] = "transpose"
        elif op in ("gather", "scatter") or any(o in ("gather", "scatter") for o in inner_ops):
            cats[name] = "gather/scatter"
        elif op == "fusion":
            if "reduce" in inner_ops:
                cats[name] = "fusion:reduce (LN, softmax, bias grads)"
            else:
                cats[name] = "fusion:elementwise"
        else:
            cats[name] = "other:" + op
    return cats


def hlo_counts(instrs, comps, entry):
    c = collections.Counter()
    for name in comps[entry]:
        ins = instrs[name]
        c[ins["op"]] += 1
        if ins["op"] == "fusion" and ins["calls"] in comps:
            inner = {instrs[n]["op"] for n in comps[ins["calls"]]}
            for op in ("dot", "transpose", "copy"):
                if op in inner:
                    c[f"fusion containing {op}"] += 1
    return c


def load_trace(logdir):
    files = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise SystemExit(f"no trace.json.gz under {logdir}")
    with gzip.open(sorted(files)[-1]) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="traced steps")
    p.add_argument("--dump", default="", help="also write the optimized HLO here")
    p.add_argument("--top", type=int, default=15, help="slowest ops to list")
    p.add_argument("--keep-host-memory", default="on", choices=("on", "off"),
                   help="as in step_vs_torch.py")
    args = p.parse_args()
    kept = False
    if args.keep_host_memory == "on":  # before JAX starts any thread
        from w2s_jax.core import host_memory
        kept = host_memory.keep_freed_memory()
    import jax

    print(f"host memory kept: {kept}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; cores "
          f"{sorted(os.sched_getaffinity(0))}; jax {jax.__version__}")
    step_fn, state, data = build(args.model, args.batch, args.seq)
    compiled = step_fn.lower(state, data).compile()
    text = compiled.as_text()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        with open(os.path.join(args.dump, f"{args.model}_step.hlo.txt"), "w") as f:
            f.write(text)
    instrs, comps = parse_hlo(text)
    entry = next(l.split()[1].lstrip("%") for l in text.splitlines()
                 if l.startswith("ENTRY"))
    counts = hlo_counts(instrs, comps, entry)
    cats = categorize(instrs, comps)
    print("optimized HLO, entry computation: " + ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items()) if k in (
            "dot", "transpose", "copy", "fusion", "fusion containing dot",
            "fusion containing transpose", "fusion containing copy",
            "scatter", "gather", "custom-call")))

    # warm up, then untraced timing with rusage
    for _ in range(2):
        state, m = step_fn(state, data)
        m["loss"].block_until_ready()
    walls, faults, users, syss = [], [], [], []
    for _ in range(3):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        state, m = step_fn(state, data)
        m["loss"].block_until_ready()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        walls.append(t1 - t0)
        faults.append(r1.ru_minflt - r0.ru_minflt)
        users.append(r1.ru_utime - r0.ru_utime)
        syss.append(r1.ru_stime - r0.ru_stime)
    wall = statistics.median(walls)
    print(f"untraced step: median {wall * 1e3:.1f} ms (of {len(walls)}), "
          f"user {statistics.median(users) * 1e3:.0f} ms, sys "
          f"{statistics.median(syss) * 1e3:.0f} ms, minor faults "
          f"{statistics.median(faults):.0f}/step")

    logdir = tempfile.mkdtemp(prefix="step_profile_")
    with jax.profiler.trace(logdir):
        for _ in range(args.steps):
            state, m = step_fn(state, data)
            m["loss"].block_until_ready()
    trace = load_trace(logdir)
    per_op = collections.defaultdict(float)
    unknown = collections.defaultdict(float)
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X":
            continue
        nm = ev.get("name", "")
        key = nm.split(":")[0] if nm not in instrs else nm
        if key in cats:
            per_op[key] += ev["dur"] / 1e6 / args.steps
        else:
            unknown[nm] += ev["dur"] / 1e6 / args.steps
    by_cat = collections.defaultdict(float)
    n_by_cat = collections.Counter()
    for name, t in per_op.items():
        by_cat[cats[name]] += t
        n_by_cat[cats[name]] += 1
    total = sum(by_cat.values())
    print(f"\ntraced: {args.steps} steps, per step: ops {total:.3f} s; "
          f"wall (untraced) {wall:.3f} s")
    print("| category | ops | s/step | % of op time |")
    print("|---|---:|---:|---:|")
    for cat, t in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"| {cat} | {n_by_cat[cat]} | {t:.3f} | {t / total:.1%} |")
    print(f"| **sum of ops** | {len(per_op)} | {total:.3f} | 100% |")
    # The weight GEMM rates by kind, from the dots' own shapes.
    flops = collections.defaultdict(float)
    for name in per_op:
        if cats[name].startswith("dot:"):
            ins = instrs[name]
            line = ins["line"]
            if ins["op"] == "fusion":
                line = next(instrs[n]["line"] for n in comps[ins["calls"]]
                            if instrs[n]["op"] == "dot")
            flops[cats[name]] += dot_flops(line, instrs)
    print("\n| dot kind | GFLOP/step | s/step | GFLOP/s |")
    print("|---|---:|---:|---:|")
    for cat in sorted(flops):
        print(f"| {cat} | {flops[cat] / 1e9:.1f} | {by_cat[cat]:.3f} | "
              f"{flops[cat] / by_cat[cat] / 1e9:.1f} |")
    print(f"\n{args.top} slowest ops (s/step):")
    for name, t in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        ins = instrs[name]
        print(f"  {t:.4f}  {cats[name]:<14} {name}: {ins['shape'][:60]}  "
              f"[{ins['op_name'][-70:]}]")
    big_unknown = sorted(unknown.items(), key=lambda kv: -kv[1])[:8]
    print("\nother trace events (per step, may nest/overlap): " + "; ".join(
        f"{k[:50]} {v:.3f}s" for k, v in big_unknown))


def dot_flops(line, instrs):
    """2 * prod(output dims) * prod(contracted dims) of a dot line."""
    def dims(shape):
        m = re.match(r"\w+\[([\d,]*)\]", shape)
        return [int(x) for x in m.group(1).split(",") if x] if m else []
    out = re.match(r"^(?:ROOT )?%?[\w.\-]+ = (\S+)", line)
    lhs = re.search(r" dot\(%?([\w.\-]+)", line)
    lc = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    if not (out and lhs and lc) or lhs.group(1) not in instrs:
        return 0.0
    lhs_dims = dims(instrs[lhs.group(1)]["shape"])
    k = np.prod([lhs_dims[int(i)] for i in lc.group(1).split(",") if i])
    return 2.0 * float(np.prod(dims(out.group(1)))) * float(k)


if __name__ == "__main__":
    main()
