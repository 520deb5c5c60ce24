"""The non-GEMM parts of a gpt2-small train step, fwd+bwd: JAX vs torch.

bench/gemm_shapes.py shows the weight matmuls at near parity; this times
the remaining suspects, each summed over gpt2-small's 12 layers where they
repeat:
  attention  our GPT2Attention core (einsum QK^T, where-mask, fp32
             softmax, einsum PV) vs torch's F.scaled_dot_product_attention
             with is_causal=True (what HF's sdpa path runs when the
             attention mask has no padding);
  ln+gelu    2 LayerNorms + tanh-GELU of one block, as flax/torch modules;
  embedding  the token-embedding gradient (scatter-add into a dense
             50257 x 768 table) + position embedding.

  python bench/step_parts.py [--torch-threads 1]
"""
import argparse
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from timing import median_time


def attention_jax(q, k, v):
    """The core of w2s_jax.models.gpt2.GPT2Attention, mask and all."""
    length, head_dim = q.shape[1], q.shape[-1]
    allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim ** -0.5
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    b, L, h, hd, layers, vocab = args.batch, args.seq, 12, 64, 12, 50257
    d = h * hd
    rng = np.random.default_rng(0)
    rows = {}

    # attention: fwd+bwd w.r.t. q, k, v, cotangent = ones (sum)
    qkv = [rng.standard_normal((b, L, h, hd), dtype=np.float32) for _ in range(3)]
    jgrad = jax.jit(jax.grad(lambda q, k, v: attention_jax(q, k, v).sum(),
                             argnums=(0, 1, 2)))
    jq = [jnp.asarray(x) for x in qkv]
    tj = median_time(lambda: jax.block_until_ready(jgrad(*jq)), args.reps, warmup=2)
    # torch wants [b, h, L, hd]
    tq = [torch.from_numpy(x).transpose(1, 2).contiguous().requires_grad_()
          for x in qkv]

    def torch_attn():
        F.scaled_dot_product_attention(*tq, is_causal=True).sum().backward()
    tt = median_time(torch_attn, args.reps, warmup=2)
    rows["attention core x12"] = (tj * layers, tt * layers)

    # two LayerNorms and the tanh GELU of one block, fwd+bwd
    x = rng.standard_normal((b, L, d), dtype=np.float32)
    hmid = rng.standard_normal((b, L, 4 * d), dtype=np.float32)
    ln = nn.LayerNorm(epsilon=1e-5)
    lnp = ln.init(jax.random.key(0), jnp.asarray(x))

    def jax_ln_gelu(p, x, hmid):
        return (ln.apply(p, x).sum() + ln.apply(p, x * 2).sum()
                + jax.nn.gelu(hmid, approximate=True).sum())
    jg = jax.jit(jax.grad(jax_ln_gelu, argnums=(0, 1, 2)))
    jx, jh = jnp.asarray(x), jnp.asarray(hmid)
    tj = median_time(lambda: jax.block_until_ready(jg(lnp, jx, jh)), args.reps, warmup=2)
    tln = torch.nn.LayerNorm(d, eps=1e-5)
    tx = torch.from_numpy(x).requires_grad_()
    th = torch.from_numpy(hmid).requires_grad_()

    def torch_ln_gelu():
        (tln(tx).sum() + tln(tx * 2).sum()
         + F.gelu(th, approximate="tanh").sum()).backward()
    tt = median_time(torch_ln_gelu, args.reps, warmup=2)
    rows["2 LayerNorm + GELU x12"] = (tj * layers, tt * layers)

    # token + position embedding gradients
    ids = rng.integers(0, vocab, (b, L))
    wte = rng.standard_normal((vocab, d), dtype=np.float32) * 0.02
    wpe = rng.standard_normal((1024, d), dtype=np.float32) * 0.02
    cot = rng.standard_normal((b, L, d), dtype=np.float32)

    def jax_embed(wte, wpe, ids, cot):
        return ((wte[ids] + wpe[jnp.arange(L)][None]) * cot).sum()
    je = jax.jit(jax.grad(jax_embed, argnums=(0, 1)))
    ja = [jnp.asarray(a) for a in (wte, wpe, ids, cot)]
    tj = median_time(lambda: jax.block_until_ready(je(*ja)), args.reps, warmup=2)
    twte = torch.from_numpy(wte).requires_grad_()
    twpe = torch.from_numpy(wpe).requires_grad_()
    tids, tcot = torch.from_numpy(ids), torch.from_numpy(cot)

    def torch_embed():
        twte.grad = twpe.grad = None
        ((F.embedding(tids, twte) + F.embedding(torch.arange(L), twpe)[None])
         * tcot).sum().backward()
    tt = median_time(torch_embed, args.reps, warmup=2)
    rows["embedding grads (dense 50257x768)"] = (tj, tt)

    print(f"torch threads {torch.get_num_threads()}; batch {b} x {L}, "
          f"gpt2-small dims; fwd+bwd, median of {args.reps}")
    print("| part (per step) | jax (ms) | torch (ms) | jax/torch |")
    print("|---|---:|---:|---:|")
    for name, (j, t) in rows.items():
        print(f"| {name} | {j * 1e3:.0f} | {t * 1e3:.0f} | {j / t:.2f} |")


if __name__ == "__main__":
    main()
