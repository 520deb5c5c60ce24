"""Early stopping on the quickstart (MiniLM-L6 -> MPNet-base, frozen
features, SST-2, 3 seeds, xent and logconf): every stage is evaluated every
28 steps (half an epoch) and reports the final checkpoint, the oracle
choice (best gold test accuracy: an upper bound that looks at test labels)
and the honest choices (best accuracy / AUROC against the stage's own
targets on 10% of its training examples held out). Results: docs/recipes.md.

    W2S_DATA_DIR=../shared/data python -m w2s_jax.main \
        --config=configs/early_stopping_sst2.py --workdir=runs/docs

With a bag-of-words supervisor: --config.weak.name=bow-tfidf.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quickstart  # noqa: E402


def get_config():
    config = quickstart.get_config()
    config.early_stopping.eval_every = 28
    config.early_stopping.val_fraction = 0.1
    return config
