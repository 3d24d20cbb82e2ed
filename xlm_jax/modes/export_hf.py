"""`--mode=export_hf --workdir=RUN --export_dir=DIR`: a run's checkpoint as a transformers directory.

Needs no --config: the run's config.json gives the model (xlm_jax.load reads it).
"""
from xlm_jax.api import load
from xlm_jax.errors import XlmJaxError


def main(config, workdir: str, flags) -> None:
    del config
    if not flags.export_dir:
        raise XlmJaxError("--mode=export_hf needs --export_dir=DIR (a new directory to write)")
    print(load(workdir, flags.step).export_hf(flags.export_dir))
