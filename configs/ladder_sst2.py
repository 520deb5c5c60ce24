"""A model ladder on SST-2 as a grid: every (weak, strong) pair of

    bow-tfidf < MiniLM-L3 < MiniLM-L6 < MPNet-base

(real offline encoders, frozen features with linear heads), three seeds,
cross-entropy and the confidence loss: 6 pairs x 2 losses x 3 seeds = 36
runs in one command, each weak model's labels and each ceiling trained
once. The report's tables and plots: docs/ladder/.

    W2S_DATA_DIR=../shared/data python -m w2s_jax.main \
        --config=configs/ladder_sst2.py --workdir=runs/ladder
    python -m w2s_jax.report --workdir=runs/ladder

Split it over machines with --shard=i/n (launch/README.md); the data
settings are the quickstart's and the bootstrap config's, so in one
workdir the three share their features.
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.task = "sst2"
    config.n_train = 4000  # halves of 2000
    config.n_test = 1000   # the balanced SST-2 validation set (856 examples)
    config.max_ctx = 128
    config.overlength = "truncate"
    # Every ladder model takes these settings as weak and as strong model.
    config.weak = model_config("bow-tfidf", mode="features", epochs=10)
    config.strong = model_config("mpnet-base", mode="features", epochs=10)
    config.grid.ladder = "bow-tfidf,minilm-l3,minilm-l6,mpnet-base"
    config.seeds = "0,1,2"
    config.losses = "xent,logconf"
    config.train.log_every = 50
    return config
