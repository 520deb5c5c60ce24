"""Several weak supervisors on SST-2: bow-tfidf, MiniLM-L3 and MiniLM-L6,
each trained on gold half A, supervise MPNet-base, alone and as an
ensemble (their mean probability; --config.ensemble.combine=vote for a
majority vote). Frozen features with linear heads as in
configs/quickstart.py, 3 seeds, xent and logconf. Results and their
reading: docs/recipes.md.

    W2S_DATA_DIR=../shared/data python -m w2s_jax.main \
        --config=configs/ensemble_sst2.py --workdir=runs/ensemble

With the workdir of configs/bootstrap_sst2.py the four models' features
are extracted once for both, and weak_m1 (bow-tfidf on gold half A) is
the w2s and bootstrap recipes' "weak" stage.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bootstrap_sst2  # noqa: E402


def get_config():
    # The bootstrap config's task, data and models (its workdir's features
    # and weak stage are then shared): only the recipe differs.
    config = bootstrap_sst2.get_config()
    config.recipe = "ensemble"
    config.ensemble.combine = "mean"
    return config
