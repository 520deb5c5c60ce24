"""The release's experiment with the paper's auxiliary confidence loss.

Same as configs/nlp_xent.py, but the weak-to-strong stage uses logconf:
alpha warmed up linearly to 0.5 over the first 20% of training (the paper's
schedule, logconf's defaults; --config.loss_params.schedule=release_jump is
the release's jump schedule, and brings its 10% warmup with it). With the
same --workdir as an xent run, the weak and ceiling stages are reused:

    python -m w2s_jax.main --config=configs/nlp_aux.py --workdir=runs/nlp
"""
from w2s_jax.config import base_config


def get_config():
    config = base_config()
    config.loss = "logconf"
    return config
