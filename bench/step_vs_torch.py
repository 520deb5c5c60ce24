"""One classification train step: w2s_jax (Flax, jitted) vs HF PyTorch.

The step is forward + backward + Adam update of a sequence classifier
(last-token pooling, bias-free 2-class head, mean cross-entropy) on a dense
batch of B x L tokens. Both sides are randomly initialised: FLOPs and
memory traffic do not depend on the weights' values, and no pretrained
weights can be downloaded here.

  JAX:     w2s_jax.train.steps.make_train_step (the trainer's own jitted step) on
           the registry's backbone, optimizer from steps.make_optimizer.
  PyTorch: transformers' GPT2ForSequenceClassification (or
           Qwen2ForSequenceClassification), torch.optim.Adam, F.cross_entropy.

Variants (`--breakdown`; by default only for the tiny model) split the
time to explain gaps:
  jax:plain_step  a hand-written jit(value_and_grad + optax.adam), no
                  micro-batch scan: the cost of the trainer's step structure;
  jax:fwd_bwd / torch:fwd_bwd  gradients only: the optimizer's share.

Model FLOPs per step (printed with the table), the usual training count:
  6 * N_nonembed * B * L            (2 forward + 4 backward per weight, token)
  + 12 * n_layer * B * L^2 * d_attn (QK^T and PV, 2*L^2*d_attn each forward,
                                     x3 for fwd+bwd, full L x L: both
                                     implementations compute the masked
                                     upper triangle too)
N_nonembed excludes the token/position embedding tables (a gather, not a
matmul); it counts everything else, LayerNorms and the (negligible) head. MFU divides the model
FLOPs per second by the measured matmul peak of this machine (the best of a
large jnp.dot and torch.matmul), not a datasheet number.

CPU:  python bench/step_vs_torch.py               (tiny + gpt2-small shapes)
      taskset -c 1 python bench/step_vs_torch.py  (both pinned to one core)
GPU:  python bench/step_vs_torch.py --device gpu --model gpt2-large \
          --dtype bfloat16                        (params stay fp32 on both
          sides; JAX computes in bf16 via build_classifier's compute_dtype,
          torch under autocast(bf16))
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from timing import median_time

# HF-style config dicts: our registry parses them with the family's
# config_from_hf, transformers with its own config class, so both sides
# are built from the same numbers.
MODELS = {
    # w2s_jax's tiny-gpt2-random: byte vocabulary, 2 layers, d=64.
    "tiny": {"model_type": "gpt2", "vocab_size": 256, "n_positions": 512,
             "n_embd": 64, "n_layer": 2, "n_head": 4},
    "gpt2": {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
             "n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {"model_type": "gpt2", "vocab_size": 50257,
                    "n_positions": 1024, "n_embd": 1024, "n_layer": 24,
                    "n_head": 16},
    "gpt2-large": {"model_type": "gpt2", "vocab_size": 50257,
                   "n_positions": 1024, "n_embd": 1280, "n_layer": 36,
                   "n_head": 20},
    # The Qwen2 (Llama-family) code path at toy size, to test it on a CPU.
    "tiny-qwen2": {"model_type": "qwen2", "vocab_size": 256,
                   "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "max_position_embeddings": 512,
                   "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
                   "tie_word_embeddings": True, "hidden_act": "silu"},
    # Qwen/Qwen2.5-0.5B's config.json (the numbers that set the shapes).
    "qwen2.5-0.5b": {"model_type": "qwen2", "vocab_size": 151936,
                     "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": True, "hidden_act": "silu"},
}
EMBEDDING_NAMES = ("wte", "wpe", "embed_tokens")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny,gpt2",
                   help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed steps per variant, the first compiles; "
                        "0 = pick from the model size")
    p.add_argument("--rounds", type=int, default=0,
                   help="timed rounds; 0 = pick from the model size")
    p.add_argument("--steps-per-round", type=int, default=0,
                   help="steps per variant per round; 0 = pick")
    p.add_argument("--breakdown", default="auto", choices=("auto", "on", "off"),
                   help="also time jax:plain_step and the fwd_bwd variants; "
                        "auto = only for models under 10M params (a "
                        "gpt2-small breakdown takes ~7 min on 2 busy cores)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch.set_num_threads on CPU; 0 = all cores")
    p.add_argument("--peak-n", type=int, default=0,
                   help="matmul size for the peak; 0 = 8192 gpu, 2048 cpu "
                        "(512 for bf16 on cpu)")
    p.add_argument("--keep-host-memory", default="on", choices=("on", "off"),
                   help="w2s_jax.core.host_memory.keep_freed_memory() first, on cpu "
                        "(glibc malloc keeps freed memory: no page faults "
                        "per step); off = glibc's defaults, as before issue 12")
    return p.parse_args()


def matmul_peak(args, torch_dev):
    """GFLOP/s of a large square matmul, jnp and torch, median of reps."""
    import jax
    import jax.numpy as jnp

    # bf16 matmuls on a CPU without native bf16 (this one: AVX2 only) are
    # slow in torch (<1 GFLOP/s), so the CPU bf16 test uses a small size.
    n = args.peak_n or (8192 if args.device == "gpu" else
                        2048 if args.dtype == "float32" else 512)
    flops = 2 * n ** 3
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    out = {"jnp.dot": flops / median_time(
        lambda: dot(a, b).block_until_ready(), 10) / 1e9}
    if torch_dev is not None:
        import torch
        tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        ta = torch.randn(n, n, dtype=tdtype, device=torch_dev)
        tb = torch.randn(n, n, dtype=tdtype, device=torch_dev)

        def tmm():
            torch.matmul(ta, tb)
            if torch_dev == "cuda":
                torch.cuda.synchronize()
        tmm()
        out["torch.matmul"] = flops / median_time(tmm, 10) / 1e9
    return n, out


def model_flops(hf, batch, seq, n_nonembed):
    if hf["model_type"] == "gpt2":
        layers, d_attn = hf["n_layer"], hf["n_embd"]
    else:
        layers = hf["num_hidden_layers"]
        d_attn = hf["num_attention_heads"] * (
            hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    tokens = batch * seq
    return 6 * n_nonembed * tokens + 12 * layers * batch * seq * seq * d_attn


def random_model(name, hf):
    """A registry.ResolvedModel of the HF-style config `hf`, randomly
    initialised (no weights, no tokenizer)."""
    from w2s_jax.models import registry
    family = registry.MODEL_TYPES[hf["model_type"]]
    return registry.ResolvedModel(
        name=name, family=family,
        backbone_config=registry.FAMILIES[family].config_from_hf(hf),
        tokenizer=None, default_lr=1e-5, default_minibatch_size=None,
        checkpoint_dir=None, source={"kind": "random_init"})


def jax_variants(name, hf, args, ids, labels, breakdown):
    """name -> zero-arg callable running one synced step; and N_nonembed."""
    import jax
    import jax.numpy as jnp
    import optax
    from w2s_jax.core import sharding
    from w2s_jax.train import losses, steps

    model = random_model(name, hf)
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="normal",
                                    compute_dtype=args.dtype)
    # One device: the comparison is per device; the mesh benchmark is
    # bench/mesh_layouts.py.
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh)
    n_nonembed = sum(
        x.size for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if not any(getattr(k, "key", None) in EMBEDDING_NAMES for k in path))

    settings = steps.TrainSettings(
        lr=1e-5, head_lr=None, batch_size=args.batch,
        minibatch_size=args.batch, epochs=1, lr_schedule="constant",
        warmup_steps=0, weight_decay=0.0, eval_batch_size=args.batch,
        max_ctx=args.seq, log_every=1)
    total_steps = 10 ** 6
    tx = steps.make_optimizer(settings)
    forward = steps.module_forward(module)
    loss = losses.get_loss("xent")
    step_fn = steps.make_train_step(
        forward, tx, loss, {}, mesh,
        param_shardings=sharding.shardings_of(params))
    targets = np.eye(2, dtype=np.float32)[labels]
    mask = np.ones_like(ids)
    # The trainer's layout: [n_micro, minibatch, ...], here one micro-batch.
    batch = sharding.to_global(
        mesh, {"inputs": (ids[None], mask[None]), "targets": targets[None]}, 1)
    holder = {"w2s": steps.init_state(tx, params, mesh,
                                     total_steps=total_steps)}

    def w2s_step():
        holder["w2s"], metrics = step_fn(holder["w2s"], batch)
        metrics["loss"].block_until_ready()

    variants = {"jax:w2s_step": w2s_step}
    if not breakdown:
        return variants, n_nonembed

    inputs = (jnp.asarray(ids), jnp.asarray(mask))
    jtargets = jnp.asarray(targets)

    def mean_xent(p):
        logits = forward(p, inputs)
        return loss.per_example(logits=logits, targets=jtargets, stats=None,
                                progress=0.0, params={}).mean()

    plain_tx = optax.adam(1e-5)

    def plain(p, opt_state):
        value, grads = jax.value_and_grad(mean_xent)(p)
        updates, opt_state = plain_tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    plain = jax.jit(plain, donate_argnums=(0, 1))
    # Its own copy of the params (made before any step runs): the w2s step
    # donates (frees) the buffers it is given.
    p2 = jax.tree.map(jnp.array, params)
    holder["plain"] = (p2, plain_tx.init(p2))

    def plain_step():
        p, o, value = plain(*holder["plain"])
        holder["plain"] = (p, o)
        value.block_until_ready()

    grad_fn = jax.jit(jax.value_and_grad(mean_xent))

    def fwd_bwd():
        value, grads = grad_fn(holder["plain"][0])
        jax.block_until_ready((value, grads))

    variants.update({"jax:plain_step": plain_step, "jax:fwd_bwd": fwd_bwd})
    return variants, n_nonembed


def torch_variants(hf, args, ids, labels, breakdown, dev):
    import torch
    import torch.nn.functional as F
    import transformers

    conf = dict(hf)
    model_type = conf.pop("model_type")
    # ids are drawn from 1..V-1, so HF's "last non-pad token" is the last
    # position, as for our mask-based pooling; bos/eos only silence a
    # config warning for the 256-token vocabulary.
    last = conf["vocab_size"] - 1
    common = dict(num_labels=2, pad_token_id=0, bos_token_id=last,
                  eos_token_id=last)
    if model_type == "gpt2":
        tconf = transformers.GPT2Config(
            **conf, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            activation_function="gelu_new", **common)
        model = transformers.GPT2ForSequenceClassification(tconf)
    else:
        tconf = transformers.Qwen2Config(**conf, attention_dropout=0.0, **common)
        model = transformers.Qwen2ForSequenceClassification(tconf)
    model = model.to(dev).train()
    n_nonembed = sum(p.numel() for n, p in model.named_parameters()
                     if not any(e + "." in n for e in EMBEDDING_NAMES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    tids = torch.from_numpy(ids).long().to(dev)
    tmask = torch.ones_like(tids)
    tlabels = torch.from_numpy(labels).long().to(dev)
    autocast = args.dtype == "bfloat16"

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def loss_backward():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=tids, attention_mask=tmask).logits
        loss = F.cross_entropy(logits.float(), tlabels)
        loss.backward()
        return loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss_backward()
        opt.step()
        sync()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss_backward()
        sync()

    variants = {"torch:step": step}
    if breakdown:
        variants["torch:fwd_bwd"] = fwd_bwd
    info = {"attn_implementation": model.config._attn_implementation,
            "adam": "torch.optim.Adam defaults (foreach/fused: None -> "
                    "per-parameter for-loop on CPU)"}
    return variants, n_nonembed, info


def _count_params(hf):
    """Rough parameter count from the config, only to pick defaults."""
    d = hf.get("n_embd") or hf["hidden_size"]
    layers = hf.get("n_layer") or hf["num_hidden_layers"]
    return 12 * layers * d * d + hf["vocab_size"] * d


def run_model(name, args, torch_dev, peak):
    hf = MODELS[name]
    rng = np.random.default_rng(0)
    ids = rng.integers(1, hf["vocab_size"], (args.batch, args.seq)).astype(np.int32)
    labels = rng.integers(0, 2, args.batch)
    n_params = _count_params(hf)
    big = n_params > 10 ** 7
    breakdown = args.breakdown == "on" or (args.breakdown == "auto" and not big)

    variants, n_jax = jax_variants(name, hf, args, ids, labels, breakdown)
    n_torch, tinfo = None, {}
    if torch_dev is not None:
        tvars, n_torch, tinfo = torch_variants(hf, args, ids, labels, breakdown,
                                               torch_dev)
        variants.update(tvars)
    flops = model_flops(hf, args.batch, args.seq, n_jax)
    # Defaults keep the whole benchmark to a few minutes on 2 cores: a
    # gpt2-small step there is seconds, a tiny one tens of milliseconds.
    rounds = args.rounds or (4 if big else 5)
    per_round = args.steps_per_round or (1 if big else 10)
    warmup = args.warmup or (1 if big else 3)

    first = {}
    for vname, fn in variants.items():
        t0 = time.perf_counter()
        fn()  # includes jit compilation on the JAX side
        first[vname] = time.perf_counter() - t0
        for _ in range(warmup - 1):
            fn()
    # Rounds interleave the variants so that load from other processes on
    # this shared machine hits all of them alike; medians over all steps.
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for vname, fn in variants.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[vname].append(time.perf_counter() - t0)

    print(f"\n### {name}: batch {args.batch} x {args.seq} tokens, {args.dtype}, "
          f"{args.device}")
    print(f"N_nonembed = {n_jax:,} (jax) / "
          f"{n_torch if n_torch is None else format(n_torch, ',')} (torch); "
          f"model FLOPs/step = {flops / 1e9:.2f} GFLOP; "
          f"{rounds} rounds x {per_round} steps per variant; "
          f"torch attention: {tinfo.get('attn_implementation', '-')}")
    print("| variant | median step (ms) | min | max | first call (s) | "
          "examples/s | GFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for vname, ts in times.items():
        m = med[vname] = statistics.median(ts)
        # fwd_bwd variants do the same model FLOPs minus a negligible update.
        gflops = flops / m / 1e9
        print(f"| {vname} | {m * 1e3:.1f} | {min(ts) * 1e3:.1f} | "
              f"{max(ts) * 1e3:.1f} | {first[vname]:.2f} | "
              f"{args.batch / m:.1f} | {gflops:.1f} | {gflops / peak:.1%} |")
    if "torch:step" in med:
        print(f"ratio JAX/PyTorch (median step time, full train step): "
              f"{med['jax:w2s_step'] / med['torch:step']:.2f}")
    if breakdown:
        for side, step, fb in (("jax", "jax:plain_step", "jax:fwd_bwd"),
                               ("torch", "torch:step", "torch:fwd_bwd")):
            if step in med:
                print(f"{side}: optimizer share (step - fwd_bwd) = "
                      f"{(med[step] - med[fb]) * 1e3:.1f} ms")
    return med


def main():
    args = parse_args()
    # Before JAX's CPU client (or torch) starts any thread: malloc arenas
    # are picked per thread at its first allocation.
    kept = False
    if args.keep_host_memory == "on" and args.device == "cpu":
        from w2s_jax.core import host_memory
        kept = host_memory.keep_freed_memory()
    # Cores this process may run on: `taskset -c 0 python ...` gives both
    # frameworks one core (XLA sizes its pool by the affinity mask too).
    ncores = len(os.sched_getaffinity(0))
    if args.device == "gpu":
        # JAX would otherwise grab 75% of GPU memory up front and leave
        # torch, in the same process, too little.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if args.device == "cpu" and jax.default_backend() != "cpu":
        jax.config.update("jax_platforms", "cpu")
    if args.device == "gpu" and jax.default_backend() != "gpu":
        raise SystemExit(f"--device gpu, but jax's backend is "
                         f"{jax.default_backend()}")
    torch_dev = None
    if not args.no_torch:
        import torch
        if args.device == "cpu":
            # Every core, as XLA's CPU client uses by default.
            torch.set_num_threads(args.torch_threads or ncores)
        torch_dev = "cuda" if args.device == "gpu" else "cpu"

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{ncores} cores; jax {jax.__version__} on {jax.devices()[0]}")
    if torch_dev is not None:
        import torch
        import transformers
        print(f"torch {torch.__version__} (intra-op threads "
              f"{torch.get_num_threads()}, inter-op "
              f"{torch.get_num_interop_threads()}), transformers "
              f"{transformers.__version__}")
    print(f"host memory kept (host_memory.keep_freed_memory): {kept}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (XLA:CPU runs "
          f"its intra-op Eigen pool on all {ncores} cores by default)")
    n, peaks = matmul_peak(args, torch_dev)
    peak = max(peaks.values())
    print("matmul peak (" + args.dtype + f", {n}x{n}, median of 10): " + ", ".join(
        f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items())
        + f"; MFU below uses {peak:.1f}")
    for name in args.model.split(","):
        run_model(name.strip(), args, torch_dev, peak)


if __name__ == "__main__":
    main()
