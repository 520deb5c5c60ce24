"""Smoke experiment: tiny random byte-level GPT-2s on real sst2, a few minutes on CPU.

Needs no downloaded weights, only the data (a local mirror or the hub):

    W2S_DATA_DIR=../shared/data python -m w2s_jax.main \
        --config=configs/smoke.py --workdir=runs/smoke

The models are randomly initialised (no pretraining), so this checks the
pipeline end to end; it is not evidence about weak-to-strong generalization.
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.task = "sst2"
    config.n_train = 2000
    config.n_test = 400
    config.max_ctx = 256
    config.overlength = "truncate"
    config.weak = model_config("tiny-gpt2-random")
    config.strong = model_config("small-gpt2-random")
    config.loss = "logconf"
    config.train.epochs = 2
    config.train.log_every = 10
    return config
