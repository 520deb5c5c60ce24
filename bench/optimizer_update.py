"""The Adam update alone, on gpt2-small's parameter shapes: optax vs torch.

The update is memory-bound (it streams params, grads and both moments), so
it is a fixed cost per step that model FLOPs do not count. This isolates it,
which a noisy full-step difference (step - fwd_bwd) cannot do on a busy
machine. Shapes are GPT-2 small's (124M params, 38.6M of them in wte).

  python bench/optimizer_update.py [--torch-threads 1]
"""
import argparse
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from timing import step_times


def gpt2_shapes(layers=12, d=768, vocab=50257, positions=1024):
    shapes = [(vocab, d), (positions, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,), (d, 2)]


def _median_min(fn, reps):
    times = step_times(fn, reps)
    return statistics.median(times), min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--torch-threads", type=int, default=0,
                   help="0 = all cores")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    shapes = gpt2_shapes()
    n = sum(int(np.prod(s)) for s in shapes)
    # Bytes one update must move at least: read p, g, m, v; write p, m, v.
    traffic = 7 * 4 * n
    print(f"{len(shapes)} tensors, {n / 1e6:.1f}M params; minimum traffic "
          f"{traffic / 2 ** 30:.2f} GiB per update; median (min) of "
          f"{args.reps} after 2 warmups; torch threads {torch.get_num_threads()}")

    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    tx = optax.adam(1e-5)
    params = [jnp.asarray(x) for x in host]
    grads = [jnp.asarray(x) for x in host]

    def update(p, o, g):
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    upd = jax.jit(update, donate_argnums=(0, 1))
    state = {"p": params, "o": tx.init(params)}

    def jax_step():
        state["p"], state["o"] = upd(state["p"], state["o"], grads)
        jax.block_until_ready(state["p"])

    rows = {}
    for _ in range(2):
        jax_step()
    rows["optax.adam (jit, donated)"] = _median_min(jax_step, args.reps)

    for label, kw in (("torch Adam (default: for-loop on CPU)", {}),
                      ("torch Adam foreach=True", {"foreach": True}),
                      ("torch Adam fused=True", {"fused": True})):
        tp = [torch.from_numpy(x.copy()).requires_grad_() for x in host]
        for t, x in zip(tp, host):
            t.grad = torch.from_numpy(x.copy())
        opt = torch.optim.Adam(tp, lr=1e-5, **kw)
        for _ in range(2):
            opt.step()
        rows[label] = _median_min(opt.step, args.reps)
        del tp, opt

    print("| update | median (ms) | min (ms) | GiB/s at min traffic (median) |")
    print("|---|---:|---:|---:|")
    for label, (med, low) in rows.items():
        print(f"| {label} | {med * 1e3:.0f} | {low * 1e3:.0f} | "
              f"{traffic / med / 2 ** 30:.1f} |")


if __name__ == "__main__":
    main()
