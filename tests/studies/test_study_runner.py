"""--mode=study on a tiny grid: every arm trained, evaluated and reported; finished arms skipped,
an interrupted arm resumed exactly; a bad arm stops the study before any arm starts."""
import json
import os
import shutil
import textwrap

import pytest

from xlm_jax.errors import ConfigError
from xlm_jax.modes.study import run_study

RECIPE = '''
from xlm_jax.config import default_config

def get_config():
    c = default_config()
    c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.mlp_dim = 2, 32, 2, 64
    c.model.vocab_size, c.model.max_len = 600, 34
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.data.corpus_dir = {corpus!r}
    c.data.seq_len, c.data.tokenizer_sentences, c.data.eval_sentences_per_language = 32, 2000, 20
    c.train.num_steps, c.train.batch_size, c.train.warmup_steps, c.train.log_every = 6, 8, 2, 1
    c.checkpoint.every_steps, c.checkpoint.async_save = 3, False
    c.mesh.rules = "dp"
    return c
'''

STUDY = '''
from xlm_jax.studies.study import Arm, Study, study_config

def study(preset):
    arms = [Arm("shared", "the recipe"), Arm("narrow", "one layer", {{"model.num_layers": 1}}),
            Arm("continued", "more steps from shared", {{"train.num_steps": 3}}, start_from="shared")]
    arms += {extra}
    evals = {{"retrieval": {{"kind": "retrieval", "data": {pairs!r}, "languages": "", "max_pairs": 40}}}}
    return Study(name="tiny", title="A tiny study", preset=preset, base="tiny", arms=arms, evals=evals,
                 headline=[("retrieval", "acc", "higher")])

def get_config(arg="small"):
    return study_config(study, arg, __file__)
'''


def write_study(root, shared, extra="[]"):
    corpus = root / "corpus"
    corpus.mkdir()
    for lang in ("en", "el"):
        with open(os.path.join(shared, "mono", f"{lang}.txt"), encoding="utf-8") as f:
            (corpus / f"{lang}.txt").write_text("".join(f.readlines()[:300]), encoding="utf-8")
    pairs = root / "en-el.tsv"
    with open(os.path.join(shared, "tatoeba", "tatoeba.ell-eng.ell"), encoding="utf-8") as el, \
            open(os.path.join(shared, "tatoeba", "tatoeba.ell-eng.eng"), encoding="utf-8") as en:
        pairs.write_text("".join(f"{a.strip()}\t{b.strip()}\n" for a, b, _ in zip(el, en, range(40))), encoding="utf-8")
    (root / "configs" / "studies").mkdir(parents=True)
    (root / "configs" / "tiny.py").write_text(RECIPE.format(corpus=str(corpus)))
    study = root / "configs" / "studies" / "tiny_study.py"
    study.write_text(textwrap.dedent(STUDY.format(extra=extra, pairs=str(pairs))))
    return str(study)


def study_config(file, arg="small"):
    import importlib.util
    spec = importlib.util.spec_from_file_location("tiny_study_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def losses(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def test_study_trains_evaluates_reports_skips_finished_and_resumes_an_interrupted_arm(tmp_path, shared_data):
    file = write_study(tmp_path, shared_data)
    workdir = str(tmp_path / "study")
    first = run_study(study_config(file), workdir)
    assert list(first["arms"]) == ["shared", "narrow", "continued"]
    report = open(os.path.join(workdir, "report.md")).read()
    for arm in ("shared", "narrow", "continued"):
        assert f"| {arm} |" in report and f"small/{arm}@{workdir}" in report
        assert first["arms"][arm]["evals"]["retrieval"]["per_language"]
        assert first["arms"][arm]["evals"]["retrieval"]["random_init"]["per_language"]
    assert first["arms"]["continued"]["steps"] == 3
    assert os.path.exists(os.path.join(workdir, "shared", "export", "config.json"))   # continued started from it
    assert json.load(open(os.path.join(workdir, "results.json")))["arms"].keys() == first["arms"].keys()
    for png in ("retrieval_acc.png", "training_loss.png"):
        assert os.path.getsize(os.path.join(workdir, png)) > 1000
    assert len(open(os.path.join(workdir, "commands.sh")).read().splitlines()) == 3 + 3

    # "narrow" killed after its step-3 checkpoint: its last checkpoint and evaluation are gone
    narrow = os.path.join(workdir, "narrow")
    uninterrupted = losses(narrow)
    shutil.rmtree(os.path.join(narrow, "checkpoints", "6"))
    shutil.rmtree(os.path.join(narrow, "eval"))
    shared_rows = open(os.path.join(workdir, "shared", "metrics.jsonl")).read()
    again = run_study(study_config(file), workdir)
    assert open(os.path.join(workdir, "shared", "metrics.jsonl")).read() == shared_rows   # skipped, not retrained
    assert losses(narrow) == uninterrupted                         # steps 4-6 again, the same losses
    assert sorted(os.listdir(os.path.join(narrow, "checkpoints"))) == ["3", "6"]
    assert again["arms"]["narrow"]["evals"]["retrieval"]["per_language"] == \
        first["arms"]["narrow"]["evals"]["retrieval"]["per_language"]

    # moved to another directory, nothing is redone; an evaluation with other options is
    moved = str(tmp_path / "moved")
    os.rename(workdir, moved)
    stamp = {arm: os.path.getmtime(os.path.join(moved, arm, "eval", str(step), "results.json"))
             for arm, step in (("shared", 6), ("narrow", 6), ("continued", 3))}
    results = os.path.join(moved, "shared", "eval", "6", "results.json")
    record = json.load(open(results))
    record["evaluators"]["retrieval"]["options"]["max_pairs"] = 39
    json.dump(record, open(results, "w"))
    run_study(study_config(file), moved)
    assert os.path.getmtime(results) > stamp["shared"]
    for arm, step in (("narrow", 6), ("continued", 3)):
        assert os.path.getmtime(os.path.join(moved, arm, "eval", str(step), "results.json")) == stamp[arm]


def test_an_arm_is_an_ordinary_train_config(tmp_path, shared_data):
    from xlm_jax.studies.study import arm_configs, load_study
    file = write_study(tmp_path, shared_data)
    workdir = str(tmp_path / "study")
    configs = arm_configs(load_study(study_config(file)), file, workdir)
    assert study_config(file, f"small/narrow@{workdir}").to_dict() == configs["narrow"].to_dict()
    assert configs["narrow"].model.num_layers == 1 and configs["shared"].model.num_layers == 2
    assert configs["continued"].init_from == f"hf:{workdir}/shared/export"
    assert list(configs["shared"].evals) == ["retrieval"]          # the study's evaluators replace the recipe's
    with pytest.raises(ConfigError, match="say where the study lives"):
        study_config(file, "small/narrow")
    with pytest.raises(ConfigError, match="no arm 'wide'; its arms: shared, narrow, continued"):
        study_config(file, "small/wide@x")
    with pytest.raises(ConfigError, match="preset 'large'"):
        study_config(file, "large")


@pytest.mark.parametrize("extra, message", [
    ('[Arm("typo", "a bad field", {"model.num_layer": 3})]',
     r"arm `typo`: config field `model.num_layer` does not exist; did you mean `model.num_layers`\?"),
    ('[Arm("wrong", "a bad value", {"model.dtype": "bf16"})]', r"arm `wrong`: config field `model.dtype`"),
    ('[Arm("orphan", "from nowhere", start_from="later")]', r"arm `orphan`: start_from='later' names no earlier arm"),
])
def test_a_bad_arm_fails_before_any_arm_starts(tmp_path, shared_data, extra, message):
    file = write_study(tmp_path, shared_data, extra)
    with pytest.raises(ConfigError, match=message):
        run_study(study_config(file), str(tmp_path / "study"))
    assert not os.path.exists(tmp_path / "study")


def test_study_configs_go_with_study_mode_only():
    from xlm_jax.main import _check_study_mode
    import ml_collections
    study = ml_collections.ConfigDict({"study": {"file": "x.py"}})
    with pytest.raises(Exception, match="--mode=train needs a run config, and this is a study"):
        _check_study_mode(study, "train")
    with pytest.raises(Exception, match="--mode=study needs a study"):
        _check_study_mode(ml_collections.ConfigDict({"model": {}}), "study")
