"""A 7B student with LoRA: Qwen2.5-1.5B supervising Qwen2.5-7B on SciQ.

    python -m w2s_jax.main --config=configs/lora_qwen7b.py --workdir=runs/lora7b

By the estimate every stage prints before it trains (README "Memory
estimate"), full finetuning of its 7.1B backbone parameters would take
166 GB per device (float32 weights, gradients with their accumulation
buffer, Adam's moments, activations) at micro batch 4 x 512 tokens with
bfloat16 compute. With LoRA (rank 16 on every attention and MLP
projection, README "LoRA") the base stays frozen in bfloat16 (14.3 GB),
only the adapters (40M parameters) and the head get gradients and
optimizer state (0.6 GB), and the total is 39 GB, activations (24 GB)
included: one 80 GB accelerator (tests/test_lora.py checks both).
Weights come from the hub (not offline); an accelerator's job, not run on
this project's CPU.
"""
from w2s_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.task = "sciq"
    config.max_ctx = 512
    config.overlength = "truncate"
    config.compute_dtype = "bfloat16"
    config.weak = model_config("qwen2.5-1.5b")
    config.strong = model_config("qwen2.5-7b", lora=dict(
        rank=16, alpha=32.0, targets="", base_dtype="bfloat16"))
    config.strong.lr = 1e-4  # adapters take a larger rate than full finetunes
    config.losses = "xent,logconf"
    config.train.batch_size = 32
    config.train.minibatch_size = 4
    return config
