"""xlm_jax: pretrain and evaluate cross-lingual encoder language models in JAX/Flax."""
import os

from xlm_jax.extras import available

__version__ = "0.1.0"

# The `plan` extra installs jax's CUDA plugin to compile for GPUs this machine does not have;
# without CUDA's libraries its version check would print a traceback at every start and keep
# the plugin from compiling for a described GPU (--mode=plan).
if not available("nvidia.cuda_runtime"):
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


def load(workdir: str, step: int | None = None, log=print):
    """A trained model from a run directory, for notebooks: see xlm_jax/api.py."""
    from xlm_jax.api import load as load_run
    return load_run(workdir, step, log)
