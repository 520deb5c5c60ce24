"""The public release's default experiment: gpt2 -> gpt2-medium on sciq, xent.

Release defaults (w2s_facts.md section 2): 20000 train docs split into
halves, 10000 test docs, batch 32, 2 epochs, Adam with cosine decay, lr 5e-5
for both GPT-2 sizes, zero-initialised head, long examples dropped. Needs the
GPT-2 weights from the Hugging Face hub (or its cache):

    python -m w2s_jax.main --config=configs/nlp_xent.py --workdir=runs/nlp

Variants: --config.task=boolq, --config.strong.name=gpt2-large, and the
legacy ceiling half with --config.ceiling_half=B.
"""
from w2s_jax.config import base_config


def get_config():
    config = base_config()
    config.loss = "xent"
    return config
