"""Bootstrapping on SST-2 through real offline encoders, frozen features:

    bow-tfidf -> MiniLM-L3 -> MiniLM-L6 -> MPNet-base

against the direct bow-tfidf -> MPNet-base student, both against MPNet's
gold ceiling; three seeds, cross-entropy and the confidence loss. Results
and their reading: docs/recipes.md.

    W2S_DATA_DIR=../shared/data python -m w2s_jax.main \
        --config=configs/bootstrap_sst2.py --workdir=runs/bootstrap

Half B is cut into three disjoint slices, one per link
(--config.bootstrap.pool=reuse_b gives every link all of half B).
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.recipe = "bootstrap"
    config.task = "sst2"
    # As the quickstart (which shares these features when run in the same
    # workdir): half A 2000 for gold, half B 2000 in 3 slices of ~667.
    config.n_train = 4000
    config.n_test = 1000   # the balanced SST-2 validation set (856 examples)
    config.max_ctx = 128
    config.overlength = "truncate"
    config.models.m1 = model_config("bow-tfidf", epochs=10)
    config.models.m2 = model_config("minilm-l3", mode="features", epochs=10)
    config.models.m3 = model_config("minilm-l6", mode="features", epochs=10)
    config.models.m4 = model_config("mpnet-base", mode="features", epochs=10)
    config.seeds = "0,1,2"
    config.losses = "xent,logconf"
    config.train.log_every = 50
    return config
