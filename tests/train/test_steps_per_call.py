"""train.steps_per_call: k updates in one jitted call are k single updates, bit for bit.

Needs 8 (fake CPU) devices (the repo-root conftest). The loop tests run train_and_evaluate
in this process on a tiny model and real text from ../shared/data.
"""
import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from tests.helpers import random_batch, random_params, tiny_config, to_numpy, train_setup, write_corpus
from xlm_jax.config import sibling_config
from xlm_jax.modes.prepare import validate
from xlm_jax.errors import ConfigError, TrainingError
from xlm_jax.modes.train import call_sizes, next_call, train_and_evaluate
from xlm_jax.modes.metrics_log import MetricsLog

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                                "XLA_FLAGS=--xla_force_host_platform_device_count=8 (repo-root conftest)")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
UPDATES = 3


def test_one_call_of_k_accumulated_updates_equals_k_single_calls_bit_for_bit():
    # Dropout on, so every update must draw its own step's keys; fsdp over 4 devices, data over 2;
    # 2 microbatches (a scan inside the scan). Without accumulation: the run test below.
    config = tiny_config(batch_size=16, warmup_steps=1, dropout=0.1, grad_accum_steps=2)
    setup = train_setup(config, layout=(2, 4, 1), rules="fsdp")
    params = random_params(config, seed=3, scale=0.1)[1]
    batches = [random_batch(config, seed=10 + i) for i in range(UPDATES)]

    state, single = setup.state_from(params), []
    for batch in batches:
        state, metrics = setup.step(state, setup.put(batch))
        single.append(to_numpy(metrics))
    expected = to_numpy(state)

    stacked = jax.device_put(next_call(iter([{"mlm": b} for b in batches]), UPDATES),
                             setup.step.call_sharding(UPDATES))
    state, metrics = setup.step(setup.state_from(params), stacked, UPDATES)
    metrics, state = to_numpy(metrics), to_numpy(state)

    assert int(state.step) == UPDATES
    for key in single[0]:
        assert metrics[key].shape == (UPDATES,)
        np.testing.assert_array_equal(metrics[key], [m[key] for m in single], err_msg=key)
    assert len({float(m["learning_rate"]) for m in single}) == UPDATES   # warm-up, then decay: each step's own
    jax.tree.map(np.testing.assert_array_equal, state, expected)
    assert setup.step.jitted(("mlm",)) is setup.step.jitted(("mlm",), 1)   # k = 1: today's single-update program


def test_call_sizes_are_single_updates_up_to_the_first_multiple_then_k_at_a_time():
    assert call_sizes(0, 8, 1) == [1] * 8
    assert call_sizes(0, 8, 4) == [4, 4]
    assert call_sizes(4, 8, 2) == [2, 2]
    assert call_sizes(3, 8, 2) == [1, 2, 2]
    assert call_sizes(5, 12, 4) == [1, 1, 1, 4]
    assert call_sizes(6, 8, 4) == [1, 1]      # no whole call fits before the end
    assert call_sizes(8, 8, 4) == []


def test_a_call_of_stacked_metrics_becomes_one_row_per_update_and_each_is_checked(tmp_path):
    config = tiny_config()
    metrics_log = MetricsLog(str(tmp_path), config, 8)
    calls = {"loss": np.array([3.0, 2.5]), "grad_norm": np.array([1.0, 0.5]),
             "learning_rate": np.array([1e-3, 9e-4]), "nonfinite": np.array([0, 0])}
    metrics_log.add(4, calls, ["mlm"], num_steps=2)
    metrics_log.add(5, {key: values[1] for key, values in calls.items()}, ["mlm"])
    rows = metrics_log.flush()
    assert [(r["step"], r["loss"], r["learning_rate"]) for r in rows] == [(3, 3.0, 1e-3), (4, 2.5, 9e-4),
                                                                          (5, 2.5, 9e-4)]
    assert metrics_log.window_steps == 3
    metrics_log.add(8, {**calls, "loss": np.array([np.nan, 2.0]), "nonfinite": np.array([1, 0])}, ["mlm"],
                    num_steps=2)
    with pytest.raises(TrainingError, match="non-finite loss or gradients at step 7 "):
        metrics_log.flush()
    metrics_log.close()


def k4_config(**fields):
    """tiny_config with steps_per_call 4 and intervals that fit it, then `fields` ("section__name")."""
    config = tiny_config()
    settings = {"train__steps_per_call": 4, "train__num_steps": 100, "train__log_every": 20,
                "checkpoint__every_steps": 40, **fields}
    for dotted, value in settings.items():
        section, name = dotted.split("__")
        config[section][name] = value
    return config


@pytest.mark.parametrize("fields, message", [
    ({"train__log_every": 50}, r"`train.log_every`: got 50, not a multiple of train.steps_per_call=4 .* use 48 or 52"),
    ({"train__num_steps": 102}, r"`train.num_steps`: got 102, .* use 100 or 104"),
    ({"checkpoint__every_steps": 2}, r"`checkpoint.every_steps`: got 2, .* use 4$"),
    ({"train__steps_per_call": 0}, r"`train.steps_per_call`: got 0; must be a positive int"),
])
def test_intervals_that_are_not_multiples_of_steps_per_call_name_the_field_and_the_nearest_values(
        fields, message):
    config = k4_config(**fields)
    config.evals.mlm.every_steps = 80
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_evaluator_intervals_and_the_alternate_schedule_are_checked():
    config = k4_config()
    config.evals.mlm.every_steps = 0   # off: no constraint
    validate(config)
    config.evals.mlm.every_steps = 30
    with pytest.raises(ConfigError, match=r"`evals.mlm.every_steps`: got 30, .* use 28 or 32"):
        validate(config)
    config.evals.mlm.every_steps = 0
    config.objective_schedule = "alternate"
    with pytest.raises(ConfigError, match=r"`train.steps_per_call`: got 4, but objective_schedule='alternate' "
                                          r"gives each update another objective's batch"):
        validate(config)


LANGUAGES = ("en", "sw")


def run_config(corpus_dir, steps_per_call: int):
    """configs/demo.py at a tiny size with fsdp over the 8 devices: 8 steps, checkpoints every 4
    (every 3 for k = 1), no evals."""
    config = sibling_config(str(REPO_ROOT / "configs" / "demo.py"), "demo")
    m, d, t = config.model, config.data, config.train
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim, m.vocab_size, m.max_len = 2, 32, 2, 64, 450, 64
    m.dropout_rate = m.attention_dropout_rate = 0.1
    d.corpus_dir, d.seq_len, d.tokenizer_sentences = str(corpus_dir), 32, 2000
    d.eval_sentences_per_language, d.eval_batches = 20, 1
    t.batch_size, t.num_steps, t.warmup_steps, t.log_every = 8, 8, 2, 2
    t.steps_per_call = steps_per_call
    config.checkpoint.every_steps = 4 if steps_per_call > 1 else 3
    config.evals = ml_collections.ConfigDict()
    config.mesh.data, config.mesh.fsdp, config.mesh.rules = 1, -1, "fsdp"
    return config


def trained(workdir, config, remove_checkpoints=()):
    for step in remove_checkpoints:
        shutil.rmtree(workdir / "checkpoints" / str(step))
    return {row["step"]: row for row in train_and_evaluate(config, str(workdir))}


@pytest.fixture(scope="module")
def corpus_dir(shared_data, tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), shared_data, LANGUAGES, 200)


def test_runs_with_k_updates_per_call_resume_exactly_and_equal_single_updates(corpus_dir, tmp_path):
    single = trained(tmp_path / "k1", run_config(corpus_dir, 1))       # checkpoints 3, 6, 8
    assert sorted(single) == list(range(1, 9)) and single[8]["loss"] < single[1]["loss"]

    # Step 3 of the k = 1 run resumed with k = 2: step 4 alone, then calls of steps 5-6 and 7-8.
    workdir = tmp_path / "k2"
    shutil.copytree(tmp_path / "k1", workdir)
    assert trained(workdir, run_config(corpus_dir, 2), remove_checkpoints=[6, 8]) == \
        {step: single[step] for step in range(4, 9)}                   # every update's row, bit for bit
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "4", "8"]

    # ... and that run's step-4 checkpoint resumed with k = 2 (two calls).
    assert trained(workdir, run_config(corpus_dir, 2), remove_checkpoints=[8]) == \
        {step: single[step] for step in range(5, 9)}
    jsonl = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # Each resume dropped the rows of the steps it redid (4-8, then 5-8): one row per step, the last run's.
    assert [row["step"] for row in jsonl if "loss" in row] == list(range(1, 9))
