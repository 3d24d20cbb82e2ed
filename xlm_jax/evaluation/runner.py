"""Running evaluators on a model and its random-init baseline; writing <workdir>/eval/<step>/.

Used by the train loop (evaluators whose `every_steps` divides the step), by
--mode=evaluate and by the notebook API. Every evaluator's inputs are checked when the
runner is made, before anything trains or evaluates. An evaluation step's files are
written into a staging directory and renamed into place at the end, so eval/ never
holds half an evaluation; re-evaluating a step keeps the other evaluators' results
already there. The random-init baseline does not change while a run trains, so it is
computed once per evaluator and options, and kept in eval/baselines/. A fine-tuning
evaluator checkpoints into eval/finetune/<name>/ and resumes from there if interrupted.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid

import jax

from xlm_jax.evaluation import report
from xlm_jax.evaluation.encoding import SentenceEncoder, make_context
from xlm_jax.evaluation.evaluator import Evaluator, Subject
from xlm_jax.evaluation.inputs import sha256
from xlm_jax.evaluation.languages import check_evaluation_languages
from xlm_jax.evaluation.subjects import random_init_subject
from xlm_jax.jsonfiles import read_json_object


def _summary_line(result_fields: dict, limit: int = 4) -> str:
    items = list(result_fields["summary"].items())[:limit]
    return ", ".join(f"{k} {v:.4f}" for k, v in items) or f"{len(result_fields['per_language'])} language(s)"


class EvaluationRunner:
    """Runs `evaluators` for whoever holds a model. `workdir` None: write nothing (notebook).

    heldout: params -> per-language held-out MLM numbers, where a pretraining corpus exists.
    encoder: a SentenceEncoder of the model's architecture and mesh to reuse (default: a new one).
    The caller logs the records (modes/metrics_log.py: stdout, TensorBoard, metrics.jsonl).
    """

    def __init__(self, evaluators: list[Evaluator], workdir: str | None = None, log=print, heldout=None,
                 encoder: SentenceEncoder | None = None):
        self.evaluators, self.workdir, self.log, self.heldout = evaluators, workdir, log, heldout
        self.writes = workdir is not None and jax.process_index() == 0
        self._encoder = encoder   # the model's, if it has one already: its compiled shapes are reused
        self._baseline_subject = None
        self._baselines = {}
        self._hashes = {}
        for evaluator in evaluators:
            evaluator.check()

    def due(self, step: int, last: bool = False) -> list[Evaluator]:
        """The evaluators to run after training step `step`: every_steps divides it, or it is the
        run's last step (for every evaluator with every_steps > 0)."""
        return [e for e in self.evaluators
                if e.options.every_steps and (step % e.options.every_steps == 0 or last)]

    def check_languages(self, model_config, tokenizer, languages, evaluators=None) -> None:
        """ConfigError, before anything runs, for an evaluator language the model cannot encode
        (a per-language model and a language its run did not have; evaluation/languages.py)."""
        check_evaluation_languages(self.evaluators if evaluators is None else evaluators, model_config,
                                   tokenizer, languages)

    # --- the work -------------------------------------------------------------------------
    def run(self, subject: Subject, evaluators: list[Evaluator] | None = None) -> dict[str, dict]:
        """Each evaluator on `subject` (and its baseline); returns name -> record (results.json)."""
        evaluators = self.evaluators if evaluators is None else evaluators
        if not evaluators:
            return {}
        self.check_languages(subject.model_config, subject.tokenizer, subject.languages, evaluators)
        stage = self._stage_directory(subject.step)
        try:
            records = {e.name: self._evaluate(e, subject, stage) for e in evaluators}
            if self.writes:
                self._write(stage, subject, records)
        except BaseException:
            if stage:
                shutil.rmtree(stage, ignore_errors=True)
            raise
        return records

    def _context(self, evaluator: Evaluator, subject: Subject, artifacts_dir, work_dir):
        if self._encoder is None:
            self._encoder = SentenceEncoder(subject.model_config, subject.tokenizer, subject.mesh, subject.rules)
        return make_context(subject, self._encoder, log=self.log, artifacts_dir=artifacts_dir,
                            work_dir=work_dir, heldout=self.heldout)

    def _evaluate(self, evaluator: Evaluator, subject: Subject, stage: str | None) -> dict:
        start = time.perf_counter()
        work_dir = os.path.join(self.workdir, "eval", "finetune", evaluator.name, f"step_{subject.step}") \
            if self.workdir else None
        result = evaluator.evaluate(self._context(evaluator, subject, stage, work_dir))
        self._remove(work_dir)
        record = {"kind": evaluator.kind, "options": evaluator.options.to_dict(),
                  **dataclasses.asdict(result), "seconds": time.perf_counter() - start}
        record["data_files"] = {path: self._sha256(path) for path in result.data_files}
        self.log(f"eval {evaluator.name} at step {subject.step}: {_summary_line(record)} "
                 f"({record['seconds']:.1f} s)")
        if evaluator.options.random_init_baseline:
            record["random_init"] = self._baseline(evaluator, subject)
            self.log(f"eval {evaluator.name}, random-init baseline: {_summary_line(record['random_init'])}")
        return record

    def _baseline(self, evaluator: Evaluator, subject: Subject) -> dict:
        key = baseline_key(evaluator, subject)
        path = os.path.join(self.workdir, "eval", "baselines", f"{evaluator.name}-{key}.json") \
            if self.workdir else None
        if key not in self._baselines and path and os.path.exists(path):
            self._baselines[key] = read_json_object(path, "delete it to recompute the baseline", ValueError)
        if key not in self._baselines:
            if self._baseline_subject is None:
                self._baseline_subject = random_init_subject(subject)
            start = time.perf_counter()
            work_dir = os.path.join(self.workdir, "eval", "finetune", evaluator.name, "random_init") \
                if self.workdir else None
            result = evaluator.evaluate(self._context(evaluator, self._baseline_subject, None, work_dir))
            self._remove(work_dir)
            fields = dataclasses.asdict(result)
            self._baselines[key] = {k: fields[k] for k in ("per_language", "summary", "details")}
            self._baselines[key]["seconds"] = time.perf_counter() - start
            if self.writes:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                report.write_json(path, self._baselines[key])
        return self._baselines[key]

    def _remove(self, work_dir: str | None) -> None:
        """A finished fine-tune's checkpoints (3x the model's size) go once its numbers are in hand:
        they exist so that an interrupted fine-tune resumes."""
        if work_dir and self.writes:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _sha256(self, path: str) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256(path)
        return self._hashes[path]

    # --- the files ------------------------------------------------------------------------
    def step_directory(self, step: int) -> str:
        return os.path.join(self.workdir, "eval", str(step))

    def _stage_directory(self, step: int) -> str | None:
        if not self.writes:
            return None
        stage = os.path.join(self.workdir, "eval", f".partial-{step}-{uuid.uuid4().hex[:8]}")
        os.makedirs(stage)
        return stage

    def _write(self, stage: str, subject: Subject, records: dict) -> None:
        final = self.step_directory(subject.step)
        previous = os.path.join(final, "results.json")
        kept = {name: record for name, record in (read_json_object(previous, "delete it", ValueError)["evaluators"]
                                                  if os.path.exists(previous) else {}).items()
                if name not in records}   # other evaluators' results at this step stay, with their files
        for record in kept.values():
            for artifact in record.get("artifacts", []):
                if os.path.exists(os.path.join(final, artifact)):
                    shutil.copy2(os.path.join(final, artifact), os.path.join(stage, artifact))
        merged = {**kept, **records}
        for name, record in records.items():
            record["artifacts"] = record["artifacts"] + report.language_charts(stage, name, record)
            chart = report.over_steps_chart(stage, name, {**self.history(name), subject.step: record["summary"]})
            if chart:
                record["artifacts"].append(chart)
        payload = {"step": subject.step, "workdir": self.workdir, "model": subject.model_config.to_dict(),
                   "evaluators": merged}
        report.write_json(os.path.join(stage, "results.json"), payload)
        with open(os.path.join(stage, "report.md"), "w", encoding="utf-8") as f:
            f.write(report.markdown(f"Evaluation of {self.workdir} at step {subject.step}", merged))
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(stage, final)
        self.log(f"eval step {subject.step}: {final}/report.md")

    def history(self, name: str) -> dict[int, dict]:
        """step -> summary of evaluator `name`, from the results.json files of earlier steps."""
        found = {}
        root = os.path.join(self.workdir, "eval")
        for entry in os.listdir(root) if os.path.isdir(root) else []:
            path = os.path.join(root, entry, "results.json")
            if entry.isdigit() and os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)["evaluators"].get(name)
                if record:
                    found[int(entry)] = record["summary"]
        return found


def baseline_key(evaluator: Evaluator, subject: Subject) -> str:
    """What the baseline depends on: kind, options (not when they run), architecture, tokenizer, seed."""
    options = {k: v for k, v in evaluator.options.to_dict().items() if k not in ("every_steps",)}
    payload = json.dumps([evaluator.kind, options, subject.model_config.to_dict(),
                          subject.tokenizer.vocab_size, subject.seed], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def scalar_tags(records: dict) -> dict[str, float]:
    """TensorBoard tags: eval/<name>/<language>/<metric> and eval/<name>/<summary metric>."""
    tags = {}
    for name, record in records.items():
        for language, values in record["per_language"].items():
            tags.update({f"eval/{name}/{language}/{k}": float(v) for k, v in values.items()
                         if isinstance(v, (int, float))})
        tags.update({f"eval/{name}/{k}": float(v) for k, v in record["summary"].items()
                     if isinstance(v, (int, float))})
    return tags
