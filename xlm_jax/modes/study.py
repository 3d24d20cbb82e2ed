"""--mode=study: every arm of a study trained (or skipped, or resumed), evaluated, and reported.

  python -m xlm_jax.main --mode=study --config=configs/studies/emerging.py:small --workdir=runs/emerging

Each arm is <workdir>/<arm>, an ordinary run directory: an arm whose last checkpoint is at
train.num_steps is not trained again, an interrupted one resumes exactly (the train loop's
own resume), and an arm whose evaluation at that step is on disk is not evaluated again. So
arms can also run elsewhere, one per host or TPU slice: the runner prints (and writes to
<workdir>/commands.sh) each arm's `--mode=train` command; run those, bring the directories
together, and `--mode=study` then only evaluates and reports. Writes <workdir>/report.md,
results.json and PNG plots (xlm_jax/studies/report.py).
"""
import json
import os

import jax

from xlm_jax.api import load
from xlm_jax.modes.evaluate import evaluate_checkpoint
from xlm_jax.modes.train import train_and_evaluate
from xlm_jax.parallel.multihost import log
from xlm_jax.studies import report
from xlm_jax.studies.study import (EXPORT_DIR, Study, arm_configs, check_evaluator_inputs, load_study,
                                   train_command)
from xlm_jax.train.checkpoints import Checkpoints
from xlm_jax.workdir import hold_workdir

CURVE_POINTS = 60     # training-loss points kept per arm in results.json


def main(config, workdir: str, flags) -> None:
    del flags
    run_study(config, workdir)


def run_study(study_config, workdir: str) -> dict:
    """Runs the study of a `--mode=study` config in `workdir`; returns what results.json holds."""
    study = load_study(study_config)
    file = study_config.study.file
    configs = arm_configs(study, file, workdir)            # every arm validated before any starts
    with hold_workdir(workdir, "study", primary=jax.process_index() == 0, log=log):
        if study.prepare:
            study.prepare(workdir)
        check_evaluator_inputs(study, configs)
        commands = {arm.name: train_command(file, study.preset, arm, workdir) for arm in study.arms}
        _write_commands(workdir, study, commands)
        log(f"study {study.name} ({study.preset}): {len(study.arms)} arms, each an ordinary run; on several hosts "
            f"run these (an arm with start_from after its source's export), then this command again:\n  "
            + "\n  ".join(commands.values()))
        exported = {arm.start_from for arm in study.arms if arm.start_from and not arm.start_from.startswith("hf:")}
        results = {"study": study.name, "title": study.title, "preset": study.preset, "paper": study.paper,
                   "notes": study.notes, "headline": [list(h) for h in study.headline], "arms": {}}
        for arm in study.arms:
            config, arm_dir = configs[arm.name], os.path.join(workdir, arm.name)
            if arm.train:
                _train(arm.name, config, arm_dir)
            if arm.name in exported:
                _export(arm_dir, config if not arm.train else None)
            results["arms"][arm.name] = {
                "description": arm.description, "start_from": arm.start_from, "overrides": arm.overrides,
                "command": commands[arm.name] if arm.train else "(not trained: evaluated as it starts)",
                "steps": config.train.num_steps if arm.train else 0,
                "train_loss": training_curve(arm_dir),
                "evals": _evaluate(arm.name, config, arm_dir, config.train.num_steps if arm.train else 0)}
        results["findings"] = [list(f) for f in study.findings(results)] if study.findings else []
        report.write(study, results, workdir)
        log(f"study {study.name}: {os.path.join(workdir, 'report.md')}")
        return results


def _write_commands(workdir: str, study: Study, commands: dict) -> None:
    with open(os.path.join(workdir, "commands.sh"), "w") as f:
        f.write(f"# study {study.name} ({study.preset}): each arm is an ordinary run; run them anywhere, then\n"
                f"# --mode=study on the same directory evaluates and reports. Arms that start from another\n"
                f"# arm need its transformers export first (--mode=export_hf --export_dir=<arm>/{EXPORT_DIR}).\n")
        f.writelines(f"{command}\n" for command in commands.values())


def finished_step(arm_dir: str) -> int | None:
    checkpoints = Checkpoints(arm_dir, 1, async_save=False, read_only=True)
    try:
        return checkpoints.latest_step()
    finally:
        checkpoints.close()


def _train(name: str, config, arm_dir: str) -> None:
    if finished_step(arm_dir) == config.train.num_steps:
        log(f"{name}: trained already ({arm_dir}, step {config.train.num_steps})")
        return
    train_and_evaluate(config, arm_dir)


def _export(arm_dir: str, untrained_config=None) -> None:
    """<arm>/export: the arm's final weights for the arms that start from it (written once); an
    untrained arm hands on the model it starts from."""
    target = os.path.join(arm_dir, EXPORT_DIR)
    if not os.path.exists(os.path.join(target, "config.json")):
        load(untrained_config.init_from if untrained_config else arm_dir).export_hf(target)


def _evaluate(name: str, config, arm_dir: str, step: int) -> dict:
    """The study's evaluators on the arm's checkpoint `step` (0: the model it starts from), read
    back when all are on disk with the same options."""
    path = os.path.join(arm_dir, "eval", str(step), "results.json")
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        done = _moved(stored.get("evaluators", {}), os.path.dirname(stored.get("workdir", "")), os.path.dirname(arm_dir))
        if all(done.get(e, {}).get("options") == config.evals[e].to_dict() for e in config.evals):
            log(f"{name}: evaluated already ({path})")
            return {evaluator: done[evaluator] for evaluator in config.evals}
    return evaluate_checkpoint(config, arm_dir, step or None, list(config.evals))


def _moved(records: dict, old_study_dir: str, study_dir: str) -> dict:
    """Evaluation records with the study directory they were written in (their `{study}` paths)
    replaced by this one, so a study moved or opened by another path still finds them."""
    if not old_study_dir or old_study_dir == study_dir:
        return records
    old, new = (json.dumps(path)[1:-1] for path in (old_study_dir, study_dir))
    return json.loads(json.dumps(records).replace(old, new))


def training_curve(arm_dir: str) -> list[list[float]]:
    """[[step, mean training loss of the updates up to it], ...], about CURVE_POINTS of them, from
    metrics.jsonl (a resumed run logs steps again after its last checkpoint: the last row wins)."""
    losses = {}
    path = os.path.join(arm_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if "loss" in row:
                    losses[int(row["step"])] = float(row["loss"])
    steps = sorted(losses)
    if not steps:
        return []
    window = max(1, len(steps) // CURVE_POINTS)
    return [[steps[end - 1], sum(losses[s] for s in steps[end - window:end]) / window]
            for end in range(window, len(steps) + 1, window)]
