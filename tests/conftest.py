"""Test setup: 8 virtual CPU devices, and no hub traffic with a local mirror.

Both must be set before anything imports jax or huggingface_hub, which is
why they live at the top of the first module pytest imports. Tests that read
real data use the mirror named by W2S_DATA_DIR (CI sets it); without it they
read the Hugging Face hub.
"""
import os

if os.environ.get("W2S_DATA_DIR"):
    # A stray hub lookup would otherwise stall for about 50 s before failing.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The bucket-store tests talk to a local GCS emulator (tests/gcs_emulator.py)
# through gcsfs, whose search for credentials would otherwise also ask for a
# cloud VM's metadata server, which is not there.
os.environ.setdefault("NO_GCE_CHECK", "true")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
