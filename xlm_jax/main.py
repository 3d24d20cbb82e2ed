"""Command line: `python -m xlm_jax.main --config=configs/demo.py --workdir=DIR [--mode=...]`.

Modes: train, evaluate (the evaluators of `config.evals`, or only `--evals=a,b`, on the
run's latest checkpoint, or on `--config.init_from=hf:DIR`; without --config the run's own
config.json is used), export_hf (`--workdir=RUN --export_dir=DIR`: the run's latest
checkpoint as a transformers directory; needs no --config), train_tokenizer (the run's
tokenizer, `data.tokenizer` = unigram | bpe | bytes, with a per-language fertility report),
plan (`--config.plan.target=v5p-128`: the train step compiled for a TPU slice or GPU
host that need not be here; memory fit, FLOPs, collectives, roofline; xlm_jax/plan), and
study (`--config=configs/studies/<name>.py:small`: a grid of runs, each evaluated, one
report; xlm_jax/studies).
Overrides: `--config.train.num_steps=100`. Several processes (multi-host GPU, CPU
tests) join with --coordinator_address/--num_processes/--process_id, or let jax
detect the cluster (Cloud TPU pods, SLURM) with --distributed.
"""
import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data here; keep it quiet

from absl import flags, logging
from ml_collections import config_flags

from xlm_jax import cli
from xlm_jax.config import MODES
from xlm_jax.errors import XlmJaxError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, tokenizer.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do with the run.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "--mode=export_hf: the transformers directory to write.")
_STEP = flags.DEFINE_integer("step", None, "--mode=evaluate, export_hf: the checkpoint step "
                             "(default: the newest readable one).")
_EVALS = flags.DEFINE_list("evals", [], "--mode=evaluate: the config.evals entries to run (default: all).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process' index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Detect a TPU pod / SLURM / MPI cluster and join it.")
flags.mark_flags_as_required(["workdir"])


def _check_study_mode(config, mode: str) -> None:
    """A study config goes with --mode=study and only there (its arms are the run configs)."""
    is_study = config is not None and "study" in config
    if mode == "study" and not is_study:
        raise XlmJaxError("--mode=study needs a study: --config=configs/studies/<name>.py:small")
    if is_study and mode != "study":
        raise XlmJaxError(f"--mode={mode} needs a run config, and this is a study: use --mode=study, or one arm's "
                          "config, --config=<study file>:<preset>/<arm>@<study dir>")


# --mode -> the module whose main(config, workdir, flags) runs it (imported when chosen: each brings
# only what it needs, and train_tokenizer and plan need no jax devices).
MODE_MODULES = {mode: f"xlm_jax.modes.{mode}" for mode in MODES}
NO_DISTRIBUTED_SETUP = ("train_tokenizer", "plan")   # no devices to join, or compile-only ones


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # tf.data feeds from the CPU; the GPUs are jax's
    if _CONFIG.value is None and _MODE.value not in ("export_hf", "evaluate"):   # those read config.json
        raise XlmJaxError(f"--mode={_MODE.value} needs --config=configs/<recipe>.py")
    _check_study_mode(_CONFIG.value, _MODE.value)
    if _MODE.value not in NO_DISTRIBUTED_SETUP:
        from xlm_jax.parallel.mesh import initialize_distributed
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               auto=_DISTRIBUTED.value)
    mode = importlib.import_module(MODE_MODULES[_MODE.value])
    mode.main(_CONFIG.value, _WORKDIR.value, flags.FLAGS)


if __name__ == "__main__":
    cli.run(main)
