"""`--mode=train`: the training loop, top to bottom: data, state, steps, logs, evals, checkpoints.

Every process runs this same loop; only process 0 prints and writes summaries. A run is
exactly resumable: the state, the data iterator position and all randomness derive from
the checkpoint and the config seed, so a killed and resumed run reproduces an
uninterrupted one. What a run needs before its first step is modes/prepare.py (the trainer
itself, train/builder.py); metric writing, modes/metrics_log.py; what the processes share,
parallel/multihost.py; the evaluators due at a step, evaluation/runner.py (--mode=evaluate is
modes/evaluate.py).

With train.steps_per_call = k > 1, each call of the train step runs k updates on k stacked
batches; logs, evals, checkpoints and preemption happen between calls, at multiples of k
(config.validate checks the intervals). A run resumed from a step that is not a multiple of k
(a checkpoint written with another k) runs single updates up to the next multiple first: the
same updates either way, so resuming stays exact.
"""
import contextlib
import time

import jax
import numpy as np

from xlm_jax.data.pipeline import train_batches
from xlm_jax.parallel.multihost import PreemptionFlag, log, to_global
from xlm_jax.modes.metrics_log import MetricsLog
from xlm_jax.modes.prepare import Run
from xlm_jax.train.checkpoints import save_config
from xlm_jax.workdir import hold_workdir


def main(config, workdir: str, flags) -> None:
    del flags
    train_and_evaluate(config, workdir)


def train_and_evaluate(config, workdir: str) -> list[dict]:
    """Trains to `train.num_steps` (resuming from <workdir>), returns the logged per-step metrics.
    The workdir is held by this run alone (workdir.WorkdirLock) until it returns."""
    with hold_workdir(workdir, "training", primary=jax.process_index() == 0, log=log):
        return _train(config, workdir)


def _train(config, workdir: str) -> list[dict]:
    run = Run(config, workdir)
    config, trainer = run.config, run.trainer   # the config with its inputs resolved
    state = run.restore_or_init()
    if jax.process_index() == 0:  # only once the checkpoint is known to fit this config
        save_config(workdir, config)
    start_step = int(state.step)
    train_step = trainer.step
    batches = train_batches(run.data, config, start_step=start_step, streams=trainer.streams,
                            schedule=config.objective_schedule)
    metrics_log = MetricsLog(workdir, config, config.train.num_steps, trainer.objectives, run.data.languages,
                             run.data.probs, resume_step=start_step)
    flops = ", ".join(f"{part} {value / 1e9:.2f}" for o in trainer.objectives for part, value in o.flops().items())
    log(f"MFU counts model GFLOP per step: {flops}; peak {metrics_log.peak_flops / 1e12:.3f} TFLOP/s "
        f"({metrics_log.peak_source})")
    preemption = PreemptionFlag()
    t, checkpoints = config.train, run.checkpoints
    sizes = call_sizes(start_step, t.num_steps, t.steps_per_call)
    if sizes and sizes[0] < t.steps_per_call:
        log(f"resuming at step {start_step}, not a multiple of train.steps_per_call={t.steps_per_call}: "
            f"{sizes.count(1)} single update(s) first")
    compiled, step = set(), start_step   # call sizes whose program has run
    try:
        for num_updates in sizes:
            first = num_updates not in compiled
            with metrics_log.untimed() if first else contextlib.nullcontext():
                compile_start = time.perf_counter()
                batch = next_call(batches, num_updates)
                metrics_log.count_languages(batch)
                state, step_metrics = train_step(state, to_global(batch, train_step.call_sharding(num_updates)),
                                                 num_updates)
                if first:
                    jax.block_until_ready(step_metrics)
                    compiled.add(num_updates)
                    steps = f"step {step + 1}" if num_updates == 1 else f"steps {step + 1}-{step + num_updates}"
                    log(f"{steps} compiled and ran in {time.perf_counter() - compile_start:.1f}s")
            step += num_updates
            metrics_log.add(step, step_metrics, batch, timed=not first, num_steps=num_updates)
            last = step == t.num_steps
            if step % t.log_every == 0 or last:
                metrics_log.log_window(step)
            due = run.evaluation.due(step, last)
            if due:   # on the mesh, between steps; not counted as training time
                with metrics_log.untimed():
                    metrics_log.log_evals(step, run.evaluation.run(run.subject(state), due))
            preempted = preemption.agreed()
            if step % config.checkpoint.every_steps == 0 or last or preempted:
                metrics_log.log_window(step)  # never checkpoint past an unreported non-finite step
                if metrics_log.skip_streak:   # nor params whose last updates were all skipped
                    log(f"no checkpoint at step {step}: its last {metrics_log.skip_streak} update(s) were "
                        "skipped as non-finite; the next checkpoint waits for a good update")
                else:
                    with metrics_log.untimed():
                        checkpoints.save(step, state, run.data_state(step))
            if preempted:
                log(f"SIGTERM: {'saved' if not metrics_log.skip_streak else 'did not save'} step {step} "
                    f"in {checkpoints.directory}; exiting to be resumed")
                break
    finally:
        preemption.restore()
        checkpoints.close()
        metrics_log.close()
    return metrics_log.history


def call_sizes(start_step: int, num_steps: int, steps_per_call: int) -> list[int]:
    """Updates per train-step call from start_step to num_steps: single updates up to the first
    multiple of steps_per_call, then steps_per_call at a time (num_steps is a multiple of it)."""
    aligned = min(-(-start_step // steps_per_call) * steps_per_call, num_steps)
    return [1] * (aligned - start_step) + [steps_per_call] * ((num_steps - aligned) // steps_per_call)


def next_call(batches, num_updates: int) -> dict:
    """The next num_updates batches of the iterator, stacked on a new leading axis if more than one."""
    group = [next(batches) for _ in range(num_updates)]
    return group[0] if num_updates == 1 else jax.tree.map(lambda *updates: np.stack(updates), *group)
