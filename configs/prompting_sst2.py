"""Prompting SmolLM2-135M on SST-2 against finetuning it, offline on a CPU.

Weak supervisor MiniLM-L6, strong model SmolLM2-135M (a decoder with tied
embeddings), both from the offline packages (README "Offline weights").
The w2s recipe's stages (frozen features with linear heads, so a CPU can
afford them), plus the strong model prompted zero-shot and with 8
demonstrations from half B labelled with gold or with the weak model's
labels (README "Recipes", `prompting`):

    python -m w2s_jax.main --config=configs/prompting_sst2.py \\
        --workdir=runs/prompting

Calibrated scores (Zhao et al. 2021): --config.prompting.calibrate=True
(both accuracies are in each prompting stage's record either way).
Each few-shot stage is about one forward of ~330 tokens per test example;
a 2-core CPU does about one a second, hence n_test.
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.recipe = "prompting"
    config.task = "sst2"
    config.n_train = 4000  # halves of 2000: weak trains on A, w2s on B
    config.n_test = 300
    # 8 demonstrations of up to ~60 tokens each plus the query; longer
    # prompts lose their oldest demonstrations first.
    config.max_ctx = 512
    config.overlength = "truncate"
    config.weak = model_config("minilm-l6", mode="features", epochs=10)
    config.strong = model_config("smollm2-135m", mode="features", epochs=10)
    # One token each in SmolLM2's tokenizer, checked when the run starts.
    config.prompting.verbalizers = " negative| positive"  # sst2: 0 negative
    config.prompting.instruction = "Classify the sentiment of each movie review."
    config.prompting.template = "Review: {text}\nSentiment:"
    config.prompting.shots = 8
    config.train.eval_batch_size = 32
    config.train.log_every = 50
    return config
