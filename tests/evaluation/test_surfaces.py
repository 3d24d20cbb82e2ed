"""Evaluation from every surface: --mode=evaluate on a run or an imported model, during
training, and the notebook API; the same weights give the same numbers on all of them."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import xlm_jax
from xlm_jax.errors import DataError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def tatoeba_options(shared_data) -> dict:
    return {"data": str(shared_data / "tatoeba"), "languages": "deu,nld", "max_pairs": 60}


def main(*args, devices: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "xlm_jax.main", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def tatoeba_flags(shared_data) -> list[str]:
    return [f"--config.evals.tatoeba.{k}={v}" for k, v in tatoeba_options(shared_data).items()]


@pytest.fixture(scope="module")
def model(pretrained_run):
    return xlm_jax.load(str(pretrained_run), log=lambda _: None)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("hf") / "model"
    model.export_hf(str(directory), log=lambda _: None)
    return directory


@pytest.fixture(scope="module")
def notebook_record(model, shared_data) -> dict:
    return model.evaluate("retrieval", log=lambda _: None, **tatoeba_options(shared_data))


def test_notebook_evaluate_returns_plain_numbers_beside_the_random_init_baseline(notebook_record):
    assert set(notebook_record["per_language"]) == {"deu", "nld"}
    for record in (notebook_record, notebook_record["random_init"]):
        for values in record["per_language"].values():
            assert 0.0 <= values["acc_xx_to_en"] <= 1.0 and 0.0 <= values["acc_en_to_xx"] <= 1.0
    json.dumps(notebook_record)   # plain types only


def test_an_imported_transformers_directory_scores_as_the_run_it_was_exported_from(
        model, exported, notebook_record, shared_data):
    imported = xlm_jax.load(f"hf:{exported}", log=lambda _: None)
    texts = (shared_data / "tatoeba" / "tatoeba.deu-eng.deu").read_text(encoding="utf-8").splitlines()[:40]
    np.testing.assert_allclose(imported.encode(texts, layer=2), model.encode(texts, layer=2), atol=2e-5)
    record = imported.evaluate("retrieval", log=lambda _: None, **tatoeba_options(shared_data))
    assert record["per_language"] == notebook_record["per_language"]


def test_mode_evaluate_writes_results_report_plots_and_tensorboard(pretrained_run, notebook_record, shared_data):
    result = main("--mode=evaluate", "--config=configs/demo.py", f"--workdir={pretrained_run}", "--evals=tatoeba",
                  *tatoeba_flags(shared_data))
    assert result.returncode == 0, result.stderr
    step_dir = pretrained_run / "eval" / "300"
    record = json.loads((step_dir / "results.json").read_text())["evaluators"]["tatoeba"]
    assert record["per_language"] == notebook_record["per_language"]
    assert record["data_files"] and all(len(h) == 64 for h in record["data_files"].values())
    assert "| deu |" in (step_dir / "report.md").read_text()
    assert (step_dir / "tatoeba_acc_xx_to_en.png").exists()
    rows = [json.loads(line) for line in (pretrained_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["evals"]["tatoeba"]["per_language"] == record["per_language"]
    assert "eval tatoeba step 300" in result.stdout


def test_mode_evaluate_on_an_imported_model_needs_no_pretraining(exported, notebook_record, shared_data, tmp_path):
    workdir = tmp_path / "published"
    result = main("--mode=evaluate", "--config=configs/demo.py", f"--workdir={workdir}", "--evals=tatoeba",
                  f"--config.init_from=hf:{exported}", *tatoeba_flags(shared_data))
    assert result.returncode == 0, result.stderr
    record = json.loads((workdir / "eval" / "0" / "results.json").read_text())["evaluators"]["tatoeba"]
    assert record["per_language"] == notebook_record["per_language"]


def test_a_bad_input_fails_in_one_line_before_anything_is_written(pretrained_run, shared_data, tmp_path):
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    (tmp_path / "b.en").write_text("one\n", encoding="utf-8")
    before = sorted(os.listdir(pretrained_run / "eval"))
    result = main("--mode=evaluate", "--config=configs/demo.py", f"--workdir={pretrained_run}", "--evals=tatoeba",
                  f"--config.evals.tatoeba.data={tmp_path / 'a.de'}|{tmp_path / 'b.en'}",
                  "--config.evals.tatoeba.languages=")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("xlm_jax: error:") and "a.de" in error and "b.en" in error
    assert sorted(os.listdir(pretrained_run / "eval")) == before


def test_the_notebook_names_unknown_evaluators(model):
    with pytest.raises(Exception, match="no evaluator 'nope'"):
        model.evaluate("nope")


def test_finetune_accepts_only_fine_tuning_tasks(model):
    with pytest.raises(Exception, match="a fine-tuning task is one of xnli, pos, ner"):
        model.finetune("retrieval")


def test_a_missing_tatoeba_language_is_named(model, shared_data):
    with pytest.raises(DataError, match="xyz"):
        model.evaluate("retrieval", data=str(shared_data / "tatoeba"), languages="xyz")


def test_evaluators_with_every_steps_run_during_training(shared_data, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "el"):
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:300]
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    workdir = tmp_path / "run"
    result = main("--config=configs/demo.py", f"--workdir={workdir}", f"--config.data.corpus_dir={corpus}",
                  "--config.model.num_layers=2", "--config.model.hidden_size=32", "--config.model.num_heads=2",
                  "--config.model.mlp_dim=64", "--config.model.vocab_size=702", "--config.model.max_len=64",
                  "--config.data.seq_len=32", "--config.data.tokenizer_sentences=4000",
                  "--config.data.eval_sentences_per_language=20", "--config.data.eval_batches=1",
                  "--config.train.batch_size=8", "--config.train.num_steps=4", "--config.train.warmup_steps=1",
                  "--config.train.log_every=2", "--config.checkpoint.every_steps=4",
                  "--config.evals.mlm.every_steps=4", "--config.evals.tatoeba.every_steps=2",
                  *tatoeba_flags(shared_data))
    assert result.returncode == 0, result.stderr
    for step, expected in ((2, ["tatoeba"]), (4, ["mlm", "tatoeba"])):
        results = json.loads((workdir / "eval" / str(step) / "results.json").read_text())
        assert sorted(results["evaluators"]) == expected
    assert (workdir / "eval" / "4" / "tatoeba_over_steps.png").exists()
    assert "eval tatoeba at step 2" in result.stdout
