"""xlm_jax: pretrain and evaluate cross-lingual encoder language models in JAX/Flax."""

__version__ = "0.1.0"
