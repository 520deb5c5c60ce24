"""The release's experiment with the paper's auxiliary confidence loss.

Same as configs/nlp_xent.py, but the weak-to-strong stage uses logconf:
alpha warmed up linearly to 0.5 over the first 20% of training (the paper's
schedule; the release's jump schedule is loss_params.schedule=release_jump
with loss_params.warmup_frac=0.1). With the same --workdir as an xent run,
the weak and ceiling stages are reused:

    python -m w2s_jax.main --config=configs/nlp_aux.py --workdir=runs/nlp
"""
from w2s_jax.config import base_config


def get_config():
    config = base_config()
    config.loss = "logconf"
    config.loss_params.alpha_max = 0.5
    config.loss_params.warmup_frac = 0.2
    config.loss_params.schedule = "linear"
    return config
