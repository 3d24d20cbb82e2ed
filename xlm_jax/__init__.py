"""xlm_jax: pretrain and evaluate cross-lingual encoder language models in JAX/Flax."""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None, log=print):
    """A trained model from a run directory, for notebooks: see xlm_jax/api.py."""
    from xlm_jax.api import load as load_run
    return load_run(workdir, step, log)
