"""Co-supervision (Liu & Alahi 2024) on SST-2: the supervisors of
configs/ensemble_sst2.py (bow-tfidf, MiniLM-L3, MiniLM-L6 on gold half A)
teach MPNet-base (frozen features, a linear head). Round 0 trains on their
mean; each of `cosupervision.rounds` (2) later rounds trains a fresh
student with each example of half B labelled by the teacher the previous
round's student agrees with most. 3 seeds, xent and logconf:

    W2S_DATA_DIR=../shared/data python -m w2s_jax.main \
        --config=configs/cosupervision_sst2.py --workdir=runs/ensemble

In the ensemble config's workdir the teachers, the mean ensemble and round
0 (its w2s_ensemble stage) are reused from the cache. The share of
examples routed to each teacher and the routed labels' accuracy per round
are in the results' `recipe_details.rounds`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bootstrap_sst2  # noqa: E402


def get_config():
    # The bootstrap config's task, data and models (its workdir's features
    # and weak stage are then shared): only the recipe differs.
    config = bootstrap_sst2.get_config()
    config.recipe = "cosupervision"
    config.cosupervision.rounds = 2
    return config
