"""Concept saliency on SST-2: MiniLM-L6 (finetuned on this CPU) supervised
by MiniLM-L3 (frozen features): linear probes on frozen activations with
weak or gold labels, finetuning on weak labels, finetuning on weak labels
then probing with gold, and finetuning on gold, at the middle block and
the output; three seeds. Results and their reading: docs/recipes.md.

    W2S_DATA_DIR=../shared/data python -m w2s_jax.main \
        --config=configs/saliency_sst2.py --workdir=runs/saliency
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.recipe = "saliency"
    config.task = "sst2"
    config.n_train = 2000  # halves of 1000
    config.n_test = 1000   # the balanced SST-2 validation set (856 examples)
    config.max_ctx = 64
    config.overlength = "truncate"
    config.weak = model_config("minilm-l3", mode="features", epochs=10)
    # A zero-initialised head at the backbone's learning rate stays near
    # zero on a short run; the head gets its own (README "Models").
    config.strong = model_config("minilm-l6", lr=5e-5, head_lr=1e-3, epochs=2)
    config.seeds = "0,1,2"
    config.train.minibatch_size = 32
    config.train.log_every = 20
    return config
