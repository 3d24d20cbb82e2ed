"""Models to evaluate in tests: tiny random-init subjects, and one briefly pretrained run.

`pretrained_run` trains a tiny model for a few hundred steps on real text in four
languages (one subprocess, ~1 minute) once per test session and is shared by every
test that needs a model that has learned something.
"""
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import tiny_config
from xlm_jax.data.tokenizers import ByteTokenizer
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PRETRAIN_LANGUAGES = ("en", "el", "vi", "sw")


def random_subject(devices: int = 1, seed: int = 0, num_layers: int = 2, hidden_size: int = 32,
                   rules: str = "dp", tokenizer=None) -> Subject:
    """A tiny byte-level MaskedLM with random weights on a mesh of the first `devices` devices."""
    tokenizer = tokenizer or ByteTokenizer()
    config = tiny_config(num_layers=num_layers, hidden_size=hidden_size, vocab_size=tokenizer.vocab_size,
                         max_len=128, seq_len=64)
    config.mesh.data = devices
    mesh = make_mesh(config.mesh, jax.devices()[:devices])
    ids = np.full((1, 8), 4, np.int32)
    params = jax.jit(lambda key: MaskedLM(config.model).init(key, ids)["params"])(jax.random.key(seed))
    params = jax.tree.map(np.asarray, __import__("flax").linen.meta.unbox(params))
    return Subject(config.model, params, tokenizer, mesh, logical_axis_rules(rules), step=0, seed=seed)


@pytest.fixture(scope="session")
def pretrained_run(shared_data, tmp_path_factory) -> pathlib.Path:
    """A run directory: 3 layers, hidden 64, unigram vocabulary of 2,000, 300 steps of MLM."""
    corpus = tmp_path_factory.mktemp("eval_corpus")
    for lang in PRETRAIN_LANGUAGES:
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        (corpus / f"{lang}.txt").write_text("\n".join(lines[:3000]) + "\n", encoding="utf-8")
    workdir = tmp_path_factory.mktemp("pretrained")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
               f"--config.data.corpus_dir={corpus}", "--config.model.num_layers=3",
               "--config.model.hidden_size=64", "--config.model.num_heads=2", "--config.model.mlp_dim=256",
               "--config.model.vocab_size=2002", "--config.model.max_len=128", "--config.data.seq_len=64",
               "--config.data.tokenizer_sentences=12000", "--config.data.eval_sentences_per_language=20",
               "--config.data.eval_batches=1", "--config.train.num_steps=300", "--config.train.log_every=100",
               "--config.evals.mlm.every_steps=300", "--config.checkpoint.every_steps=300"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


@pytest.fixture(scope="session")
def pretrained_subject(pretrained_run) -> Subject:
    """pretrained_run's checkpoint as a Subject on one device (rules "dp"). Its params are placed as
    random_init_subject places the baseline's, so the two share compiled functions."""
    import ml_collections

    from xlm_jax import api
    from xlm_jax.evaluation.subjects import params_shardings
    model = api.load(str(pretrained_run), log=lambda _: None)
    mesh = make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
    rules = logical_axis_rules("dp")
    params = jax.device_put(jax.tree.map(np.asarray, model.params), params_shardings(model.config.model, mesh, rules))
    return Subject(model.config.model, params, model.tokenizer, mesh, rules, step=model.step)
