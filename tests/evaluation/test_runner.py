"""The evaluation runner: results.json / report.md / plots, baselines, atomic writes, options."""
import dataclasses
import json
import os

import jax

import ml_collections
import numpy as np
import pytest

from tests.evaluation.conftest import random_subject
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation.evaluator import Evaluator, Result
from xlm_jax.evaluation.registry import register
from xlm_jax.evaluation.registry import build_evaluators
from xlm_jax.evaluation.runner import EvaluationRunner, scalar_tags

CALLS = []


@register
class VectorNorm(Evaluator):
    """Test kind: the mean norm of each language's sentence vectors (so random and trained differ)."""
    kind = "test_vector_norm"

    @classmethod
    def defaults(cls):
        return {"text": "", "fail_in_evaluate": False}

    def check(self):
        if not os.path.exists(self.options.text):
            raise DataError(f"{self.options.text}: not found")

    def evaluate(self, context):
        CALLS.append(context.subject.label)
        if self.options.fail_in_evaluate:
            raise DataError("bad line 3")
        lines = open(self.options.text, encoding="utf-8").read().splitlines()
        norms = np.linalg.norm(context.encode(lines, layers=-1)[0], axis=-1)
        return Result(per_language={"xx": {"norm": float(norms.mean())}, "yy": {"norm": float(norms.max())}},
                      summary={"mean_norm": float(norms.mean())}, majority={"xx": {"norm": 1.0}},
                      source_language="xx", data_files=[self.options.text])


def evaluators(text, **overrides):
    return build_evaluators(ml_collections.ConfigDict({"norms": {"kind": "test_vector_norm", "text": str(text),
                                                                  **overrides}}))


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "xx.txt"
    path.write_text("Hallo Welt\nGuten Morgen\nWie geht's?\n", encoding="utf-8")
    return path


def test_writes_results_report_and_plots_with_the_random_init_baseline(text, tmp_path):
    workdir = tmp_path / "run"
    runner = EvaluationRunner(evaluators(text), str(workdir), log=lambda _: None)
    subject = random_subject(seed=3)   # "trained": its weights are no longer its seed's initial ones
    records = runner.run(dataclasses.replace(subject, params=jax.tree.map(lambda x: 1.5 * x, subject.params)))
    step_dir = workdir / "eval" / "0"
    results = json.loads((step_dir / "results.json").read_text())
    record = results["evaluators"]["norms"]
    assert record == json.loads(json.dumps(records["norms"]))
    assert record["random_init"]["per_language"]["xx"]["norm"] != pytest.approx(record["per_language"]["xx"]["norm"])
    assert record["data_files"] == {str(text): __import__("hashlib").sha256(text.read_bytes()).hexdigest()}
    report = (step_dir / "report.md").read_text()
    assert f"{record['per_language']['xx']['norm']:.4f}" in report and "xx (source)" in report
    assert "(random init)" in report and "(majority)" in report
    assert (step_dir / "norms_norm.png").stat().st_size > 1000
    assert sorted(os.listdir(workdir / "eval")) == ["0", "baselines"]


def test_baseline_is_computed_once_per_options_and_kept(text, tmp_path):
    workdir = str(tmp_path / "run")
    CALLS.clear()
    EvaluationRunner(evaluators(text), workdir, log=lambda _: None).run(random_subject())
    again = EvaluationRunner(evaluators(text), workdir, log=lambda _: None).run(random_subject())
    assert CALLS == ["model", "random-init", "model"]
    assert again["norms"]["random_init"]["seconds"] >= 0


def test_a_failing_evaluation_leaves_nothing_half_written(text, tmp_path):
    workdir = tmp_path / "run"
    runner = EvaluationRunner(evaluators(text, fail_in_evaluate=True), str(workdir), log=lambda _: None)
    with pytest.raises(DataError, match="bad line 3"):
        runner.run(random_subject())
    assert not (workdir / "eval").exists() or os.listdir(workdir / "eval") == []


def test_inputs_are_checked_when_the_runner_is_made(tmp_path):
    with pytest.raises(DataError, match="missing.txt: not found"):
        EvaluationRunner(evaluators(tmp_path / "missing.txt"), str(tmp_path), log=lambda _: None)


def test_re_evaluating_a_step_keeps_the_other_evaluators_results(text, tmp_path):
    workdir = str(tmp_path / "run")
    config = ml_collections.ConfigDict({
        "first": {"kind": "test_vector_norm", "text": str(text), "random_init_baseline": False},
        "second": {"kind": "test_vector_norm", "text": str(text), "random_init_baseline": False}})
    first, second = build_evaluators(config)
    EvaluationRunner([first], workdir, log=lambda _: None).run(random_subject())
    EvaluationRunner([second], workdir, log=lambda _: None).run(random_subject())
    results = json.loads(open(os.path.join(workdir, "eval", "0", "results.json")).read())
    assert sorted(results["evaluators"]) == ["first", "second"]
    assert os.path.exists(os.path.join(workdir, "eval", "0", "first_norm.png"))


def test_scores_over_steps_are_plotted_once_two_steps_exist(text, tmp_path):
    workdir = tmp_path / "run"
    runner = EvaluationRunner(evaluators(text, random_init_baseline=False), str(workdir), log=lambda _: None)
    subject = random_subject()
    runner.run(subject)
    records = runner.run(dataclasses.replace(subject, step=10))
    assert "norms_over_steps.png" in records["norms"]["artifacts"]
    assert (workdir / "eval" / "10" / "norms_over_steps.png").exists()


def test_without_a_workdir_nothing_is_written(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = EvaluationRunner(evaluators(text), None, log=lambda _: None).run(random_subject())
    assert records["norms"]["random_init"] and os.listdir(tmp_path) == ["xx.txt"]


def test_scalar_tags_name_evaluator_language_and_metric():
    tags = scalar_tags({"tatoeba": {"per_language": {"deu": {"acc": 0.5}}, "summary": {"mean_acc": 0.5}}})
    assert tags == {"eval/tatoeba/deu/acc": 0.5, "eval/tatoeba/mean_acc": 0.5}


@pytest.mark.parametrize("entry, field", [
    ({"kind": "no_such_kind"}, "evals.x.kind"),
    ({"kind": "test_vector_norm", "txet": "a"}, "evals.x.txet"),
    ({"kind": "test_vector_norm", "text": 3}, "evals.x.text"),
    ({"kind": "test_vector_norm", "every_steps": -1}, "evals.x.every_steps"),
    ({"kind": "test_vector_norm", "random_init_baseline": 1}, "evals.x.random_init_baseline"),
])
def test_bad_evaluator_options_name_the_field(entry, field):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        build_evaluators(ml_collections.ConfigDict({"x": entry}))


def test_selecting_an_unconfigured_evaluator_names_the_configured_ones():
    with pytest.raises(ConfigError, match="no evaluator tatoeba in config.evals; configured: mlm"):
        build_evaluators(ml_collections.ConfigDict({"mlm": {"kind": "mlm"}}), names=["tatoeba"])
