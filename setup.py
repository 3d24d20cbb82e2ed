"""xlm_jax: pretraining cross-lingual encoder language models in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="xlm_jax",
    version="0.1.0",
    description="Pretrain and evaluate XLM-R-style cross-lingual encoders in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["xlm_jax", "xlm_jax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-cpu>=2.21.0",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=6.0",
        "sentencepiece>=0.2.0",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "etils[epath]>=1.7",
        "safetensors>=0.4",
        "numpy>=1.26",
        "matplotlib>=3.8",       # evaluation reports: PNG plots
    ],
    extras_require={
        # tensorboard only to check, in tests, that it reads our event files: training writes
        # them with TensorFlow alone (xlm_jax/train/metrics.py).
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "hypothesis>=6.100", "tensorboard>=2.21"],
        # transformers' XLM-R in PyTorch, the reference for interop parity tests.
        # transformers 4.57.6 is the last release that also has Flax models (peer benchmarks).
        "hf": ["torch==2.13.0", "transformers==4.57.6"],
        # Cloud TPU VMs: the libtpu jax 0.10.2's own `tpu` extra pins.
        "tpu": ["libtpu==0.0.42.*"],
        # GPU hosts: jax's CUDA 12 plugin with CUDA's libraries.
        "gpu": ["jax[cuda12]==0.10.2"],
        # --mode=plan on a machine without accelerators: the compilers only (libtpu, and the CUDA
        # plugin, which compiles for a described GPU without CUDA's libraries).
        "plan": ["libtpu==0.0.42.*", "jax-cuda12-plugin==0.10.2"],
    },
)
