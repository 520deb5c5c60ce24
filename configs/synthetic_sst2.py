"""Which supervisor errors does a strong student imitate? SST-2, a synthetic
supervisor with controlled errors teaching MPNet-base (frozen features, a
linear head, as in configs/quickstart.py), 3 seeds, xent and logconf.

No weak model is trained: half B's gold labels (and the test set's, for
PGR and agreement) are corrupted by a seeded rule, `config.synthetic`
(README "Recipes"). The error rate is fixed at 0.2, about the MiniLM-L6
supervisor's in the quickstart (0.79-0.83 accuracy); only the structure
changes. Every structure in one command and one table (with one workdir
the ceiling and the MPNet features are computed once and shared):

    python -m w2s_jax.main --config=configs/synthetic_sst2.py \
        --workdir=runs/synthetic \
        --config.synthetic.kinds=flip,length,keyword,class_conditional

or one structure alone: --config.synthetic.kind=length.

    flip               each label wrong with probability 0.2
    length             the 20% errors all on the 30% longest sentences
                       (length_quantile 0.7)
    keyword            the 20% errors all on sentences containing "the"
                       (30% of SST-2's); a narrower regex, e.g. negations
                       --config.synthetic.keyword="\\b(?:not|no|never|n't)\\b"
                       (9%), caps the realised rate at its coverage
    class_conditional  all errors on negative sentences (0.4 of them)

Each run's results carry the realised error rate on half B and on the
test set, overall, per class and on/off the feature, under
`recipe_details.realised`; the w2s comparison's agreement "where
supervisor wrong" is how much of the supervisor's errors the student
copied. Soft labels: --config.synthetic.confidence=0.8. (One command per
kind until the grid of a later issue runs such sweeps as one.)
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.recipe = "synthetic"
    config.task = "sst2"
    config.n_train = 4000  # halves of 2000: the ceiling trains on A, w2s on B
    config.n_test = 1000   # the balanced SST-2 validation set (856 examples)
    config.max_ctx = 128
    config.overlength = "truncate"
    # One model: the student (the supervisor is the rule).
    config.models.m1 = model_config("mpnet-base", mode="features", epochs=10)
    config.synthetic.kind = "flip"
    config.synthetic.error_rate = 0.2
    config.synthetic.length_quantile = 0.7
    config.synthetic.keyword = r"\bthe\b"
    config.seeds = "0,1,2"
    config.losses = "xent,logconf"
    config.train.eval_batch_size = 64
    config.train.log_every = 50
    return config
