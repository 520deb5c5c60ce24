"""Generative finetuning of SmolLM2-135M on SST-2's own text, before its
ceiling and weak-to-strong stages (the paper's fair comparison: both start
from the same language-model-finetuned weights).

    python -m w2s_jax.main --config=configs/generative_sst2.py --workdir=runs/generative

The strong model first learns the train pool's sentences with the
next-token loss (no labels, one epoch); its ceiling and w2s heads then read
features of those weights. The same config with
--config.generative.epochs=0 is the "before" run (docs/baselines.md (c)).
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.task = "sst2"
    config.n_train = 2000  # halves of 1000; the generative stage reads all 2000
    config.n_test = 1000   # the balanced SST-2 validation set (856 examples)
    config.max_ctx = 64
    config.overlength = "truncate"
    config.weak = model_config("minilm-l6", mode="features", epochs=10)
    config.strong = model_config("smollm2-135m", mode="features", epochs=10)
    config.generative.epochs = 1
    config.losses = "xent,logconf"
    config.train.batch_size = 32
    config.train.minibatch_size = 8  # the language-model step's memory
    config.train.log_every = 5
    return config
