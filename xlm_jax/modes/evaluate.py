"""--mode=evaluate: the configured evaluators on a run's checkpoint or an imported model.

The run's pretraining corpus is read only when an evaluator needs it (held-out MLM);
retrieval, fine-tuning and the other evaluators need only the weights and tokenizer.
With --config.init_from=hf:DIR and no checkpoint in the workdir, the transformers model
itself is evaluated (step 0), so published models are measured on the same footing.
"""
import os

import jax

from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.evaluation.registry import build_evaluators
from xlm_jax.evaluation.runner import EvaluationRunner
from xlm_jax.evaluation.subjects import checkpoint_subject, imported_subject
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.multihost import log
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.modes.metrics_log import MetricsLog
from xlm_jax.modes.prepare import Run, validate
from xlm_jax.train.checkpoints import Checkpoints, load_config
from xlm_jax.workdir import hold_workdir


def main(config, workdir: str, flags) -> None:
    evaluate_checkpoint(evaluation_config(config, workdir), workdir, flags.step, flags.evals)


def evaluation_config(flag_config, workdir: str):
    """What --mode=evaluate runs with: the run's own config.json (its model and data are what its
    checkpoints and held-out text need), with the evaluators and mesh of --config when given; a
    workdir without config.json (an imported model to evaluate) takes --config whole."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        if flag_config is None:
            raise ConfigError(f"{workdir} has no config.json: give --config=configs/<recipe>.py (with "
                              "--config.init_from=hf:DIR to evaluate a transformers model)")
        return flag_config
    config = load_config(workdir)
    if flag_config is not None:
        config.evals, config.mesh = flag_config.evals, flag_config.mesh
        log(f"evaluating with {workdir}/config.json (model, data) and the evaluators of --config")
    return config


def evaluate_checkpoint(config, workdir: str, step: int | None = None, names=None) -> dict:
    """Runs config.evals (or only `names`) on checkpoint `step` (default: the newest readable one)
    of <workdir>, or on config.init_from; writes <workdir>/eval/<step>/ and returns its records."""
    validate(config)
    checkpoints = Checkpoints(workdir, config.checkpoint.keep, async_save=False, read_only=True)
    has_checkpoint = checkpoints.latest_step() is not None
    checkpoints.close()
    if not has_checkpoint and not config.init_from:
        raise CheckpointError(f"no checkpoint in {workdir}/checkpoints: train first, or evaluate a transformers "
                              "model with --config.init_from=hf:DIR")
    runner = EvaluationRunner(build_evaluators(config.evals, names), workdir, log)   # inputs checked next
    needs_corpus = [e.name for e in runner.evaluators if getattr(e, "needs_pretraining_corpus", False)]
    if not has_checkpoint and needs_corpus:
        raise ConfigError(f"--evals: {', '.join(needs_corpus)} need(s) a run's pretraining corpus, which an "
                          "imported model does not have; use kind=\"pseudo_perplexity\" on text files")
    # A run that is training may be evaluated (committed checkpoints are read); eval/ is this command's.
    with hold_workdir(os.path.join(workdir, "eval"), "evaluation", primary=jax.process_index() == 0, log=log):
        if not has_checkpoint:
            mesh, rules = make_mesh(config.mesh), logical_axis_rules(config.mesh.rules)
            subject = imported_subject(config.init_from.removeprefix("hf:"), mesh, rules, config.train.seed, log)
        elif needs_corpus:
            run = Run(config, workdir, read_only=True)
            runner.heldout = run.heldout
            subject = run.subject(run.restore_or_init(step))
            run.checkpoints.close()
        else:
            mesh, rules = make_mesh(config.mesh), logical_axis_rules(config.mesh.rules)
            subject = checkpoint_subject(config, workdir, mesh, rules, step, log)
        records = runner.run(subject)
        metrics_log = MetricsLog(workdir, config, config.train.num_steps)
        metrics_log.log_evals(subject.step, records)
        metrics_log.close()
    return records
