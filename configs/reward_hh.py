"""Weak-to-strong reward modelling on Anthropic HH (harmless-base), as the
paper does it: each model is a reward model (mode "reward") that scores the
two replies of a pair separately, P(A preferred) = sigmoid(r(A) - r(B)),
and the strong model learns from the weak model's preference probabilities.

    python -m w2s_jax.main --config=configs/reward_hh.py --workdir=runs/reward

Both models are offline checkpoints read as linear probes (only the scalar
head trains; the backbone runs forward at every step), so that a CPU can
afford it: MiniLM-L6 (an encoder, mean pooling) is the weak model and
SmolLM2-135M (a decoder, last-token pooling) the strong one. Each
completion keeps its last 64 tokens, the end of the reply being judged.
The paper also first trains the strong model as a language model on the
completions; add --config.generative.epochs=1
--config.generative.text=completions (a full finetune of SmolLM2: an
accelerator's work). docs/reward.md has a measured run.
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.task = "anthropic_hh"
    config.n_train = 256  # halves of 128 pairs
    config.n_test = 128
    config.max_ctx = 64
    config.overlength = "truncate"  # keep each completion's last tokens
    # A zero-initialised head at the backbones' finetuning lr (5e-5) would
    # barely move in 16 steps; only the head trains, so it gets its own lr.
    config.weak = model_config("minilm-l6", mode="reward", linear_probe=True,
                               head_lr=5e-3)
    config.strong = model_config("smollm2-135m", mode="reward",
                                 linear_probe=True, head_lr=5e-3)
    config.train.epochs = 2
    config.train.batch_size = 16
    config.train.minibatch_size = 16
    config.train.eval_batch_size = 32
    config.train.log_every = 4
    return config
