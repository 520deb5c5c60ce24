"""Side (b) of bench/e2e_vs_release.py: the weak-to-strong experiment run the
way the public PyTorch release runs it (w2s_facts.md sections 1-3), written
from those facts, not copied.

- Hugging Face PyTorch backbones (`AutoModel` from a local checkpoint
  directory, or `GPT2Model` from a config for the random byte-level GPT-2s),
  dropout off, and a bias-free, zero-initialised linear head d -> 2 on the
  pooled state: the last real token (from the attention mask) for GPT-2,
  the mean over real tokens for the sentence encoders (w2s_jax's
  `default_pooling` of the bert family).
- Each epoch: a fresh permutation, consecutive batches of `batch_size`
  (remainder dropped, so every step sees a full batch), each padded to the
  longest example of that batch (no length grouping).
- The loss on the whole batch's graph: xent with soft targets, or logconf:
  h = the student's own predictions hardened by the batch's class-balanced
  threshold (tau = the r-quantile of p_0, r = batch mean of the target's
  class-1 probability, h = 1 iff p_0 < tau), target (1 - a) y + a h with
  a = alpha_max * min(1, s / warmup) (the accepted fix of the release's
  warmup; alpha_max 0.5, warmup 0.2, the paper's values).
- torch.optim.Adam (no weight decay, default betas/eps), cosine decay to 0
  over all steps, no warmup, no clipping; the final weights.
- Every stage is retrained for every loss, as the release's sweep does:
  for each loss, weak (gold half A) -> weak labels on B, ceiling (gold half
  A), w2s (weak soft labels on half B, that loss). The gold stages use xent,
  as w2s_jax's do (the release trains them with the sweep's loss; the
  compute is identical either way).
- Evaluation in batches of `eval_batch_size`, dataset order, each padded to
  its longest example, under torch.no_grad().

Run as a subprocess by e2e_vs_release.py: `python bench/release_way.py
DATA.json OUT.json`; DATA.json is written by the parent from w2s_jax's own
data loading and tokenization (the same examples and token ids as side a).
OUT.json gets accuracies, token counts, wall time and the VmHWM of this
process.
"""
from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

from timing import peak_rss_mib


class Counter:
    def __init__(self):
        self.train_real = self.train_padded = 0
        self.eval_real = self.eval_padded = 0


def build_model(spec: dict, torch, nn):
    """(backbone, head, pooling) for one model spec from the data file."""
    import transformers
    if spec["kind"] == "gpt2_random":
        c = spec["config"]
        config = transformers.GPT2Config(
            vocab_size=c["vocab_size"], n_positions=c["n_positions"],
            n_embd=c["n_embd"], n_layer=c["n_layer"], n_head=c["n_head"],
            layer_norm_epsilon=c["layer_norm_epsilon"],
            activation_function=c["activation_function"],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        backbone = transformers.GPT2Model(config)
        hidden = c["n_embd"]
    else:
        backbone = transformers.AutoModel.from_pretrained(
            spec["dir"], hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
        hidden = backbone.config.hidden_size
    head = nn.Linear(hidden, 2, bias=False)
    nn.init.zeros_(head.weight)
    return backbone, head, spec["pooling"]


def pad_batch(ids: list, idx, pad_id: int, torch):
    """[B, L] ids and mask, L = the batch's longest example."""
    length = max(len(ids[i]) for i in idx)
    input_ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), length), dtype=torch.long)
    for row, i in enumerate(idx):
        x = torch.as_tensor(np.asarray(ids[i], dtype=np.int64))
        input_ids[row, :len(x)] = x
        mask[row, :len(x)] = 1
    return input_ids, mask


def logits_of(backbone, head, pooling, input_ids, mask, torch):
    hidden = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
    if pooling == "last":
        last = mask.sum(dim=1) - 1  # right padding: the last real position
        pooled = hidden[torch.arange(hidden.shape[0]), last]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return head(pooled)


def soft_ce(logits, targets, torch):
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def logconf_loss(logits, targets, progress, torch, alpha_max=0.5, warmup=0.2):
    """The release's confidence loss on the whole batch (see module doc)."""
    probs = torch.softmax(logits.detach(), dim=-1)
    prior = targets[:, 1].mean()
    tau = torch.quantile(probs[:, 0], prior)
    hard = (probs[:, 0] < tau).long()
    hardened = torch.nn.functional.one_hot(hard, 2).to(logits.dtype)
    a = alpha_max * min(1.0, progress / warmup)
    return soft_ce(logits, (1 - a) * targets + a * hardened, torch)


def train_stage(spec, ids, pad_id, train_idx, targets, *, loss, epochs,
                batch_size, lr, seed, counter, torch, nn):
    torch.manual_seed(seed)
    backbone, head, pooling = build_model(spec, torch, nn)
    backbone.train()  # dropout is 0 in the config
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = len(train_idx) // batch_size
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    rng = np.random.default_rng(seed)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(train_idx))
        for b in range(steps_per_epoch):
            pos = order[b * batch_size:(b + 1) * batch_size]
            idx = train_idx[pos]
            input_ids, mask = pad_batch(ids, idx, pad_id, torch)
            counter.train_real += int(mask.sum())
            counter.train_padded += mask.numel()
            y = torch.as_tensor(targets[pos], dtype=torch.float32)
            logits = logits_of(backbone, head, pooling, input_ids, mask, torch)
            if loss == "xent":
                value = soft_ce(logits, y, torch)
            else:
                value = logconf_loss(logits, y, step / total, torch)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            step += 1
    return backbone, head, pooling


def predict(model, ids, pad_id, idx, eval_batch_size, counter, torch):
    backbone, head, pooling = model
    backbone.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(idx), eval_batch_size):
            chunk = idx[start:start + eval_batch_size]
            input_ids, mask = pad_batch(ids, chunk, pad_id, torch)
            counter.eval_real += int(mask.sum())
            counter.eval_padded += mask.numel()
            out.append(torch.softmax(
                logits_of(backbone, head, pooling, input_ids, mask, torch),
                -1).numpy())
    return np.concatenate(out)


def main(data_path: str, out_path: str) -> None:
    start = time.perf_counter()
    with open(data_path) as f:
        d = json.load(f)
    for model in d["models"]:
        for side in ("train_ids", "test_ids"):
            model[side] = [np.asarray(x, np.int64) for x in model[side]]
    for key in ("half_a", "half_b", "train_labels", "test_labels"):
        d[key] = np.asarray(d[key])
    import torch
    from torch import nn
    torch.set_num_threads(d["torch_threads"])
    if d.get("matmul_precision", "default") == "bfloat16":
        # float32 matmuls with bfloat16 operands (oneDNN on CPU), as
        # w2s_jax's config.matmul_precision="bfloat16".
        torch.set_float32_matmul_precision("medium")
    counter = Counter()
    weak, strong = d["models"]
    half_a, half_b = d["half_a"], d["half_b"]
    gold = np.eye(2, dtype=np.float32)[d["train_labels"]]
    test_idx = np.arange(len(d["test_labels"]))
    common = dict(epochs=d["epochs"], batch_size=d["batch_size"],
                  seed=d["seed"], counter=counter, torch=torch, nn=nn)

    def acc(probs):
        return float(np.mean(probs.argmax(-1) == d["test_labels"]))

    results, stage_seconds = {}, {}
    for loss in d["losses"]:
        t = time.perf_counter()
        w = train_stage(weak, weak["train_ids"], weak["pad_id"], half_a,
                        gold[half_a], loss="xent", lr=weak["lr"], **common)
        weak_b = predict(w, weak["train_ids"], weak["pad_id"], half_b,
                         d["eval_batch_size"], counter, torch)
        weak_test = predict(w, weak["test_ids"], weak["pad_id"], test_idx,
                            d["eval_batch_size"], counter, torch)
        del w
        stage_seconds[f"{loss}/weak"] = time.perf_counter() - t
        t = time.perf_counter()
        c = train_stage(strong, strong["train_ids"], strong["pad_id"], half_a,
                        gold[half_a], loss="xent", lr=strong["lr"], **common)
        ceil_test = predict(c, strong["test_ids"], strong["pad_id"], test_idx,
                            d["eval_batch_size"], counter, torch)
        del c
        stage_seconds[f"{loss}/ceiling"] = time.perf_counter() - t
        t = time.perf_counter()
        s = train_stage(strong, strong["train_ids"], strong["pad_id"], half_b,
                        weak_b, loss=loss, lr=strong["lr"], **common)
        w2s_test = predict(s, strong["test_ids"], strong["pad_id"], test_idx,
                           d["eval_batch_size"], counter, torch)
        # Like w2s_jax, the student also predicts its own training half.
        predict(s, strong["train_ids"], strong["pad_id"], half_b,
                d["eval_batch_size"], counter, torch)
        del s
        stage_seconds[f"{loss}/w2s"] = time.perf_counter() - t
        accs = {"weak": acc(weak_test), "ceiling": acc(ceil_test),
                "w2s": acc(w2s_test)}
        gap = accs["ceiling"] - accs["weak"]
        accs["pgr"] = (accs["w2s"] - accs["weak"]) / gap if gap > 0 else None
        results[loss] = accs
    out = {"accuracy": results, "stage_seconds": stage_seconds,
           "tokens": vars(counter), "torch_threads": torch.get_num_threads(),
           "wall_s_inside": time.perf_counter() - start,
           "peak_rss_mib": peak_rss_mib()}
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
