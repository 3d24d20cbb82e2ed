"""The shipped configs compile at the scale they are written for, and the step's activation
sharding constraints act.

Every recipe in configs/ is lowered and compiled at its own global batch (8192 for XLM-R) on
8 fake CPU devices from abstract inputs: nothing is allocated, so a 342 GiB-per-device step
compiles here in seconds. Before, the shipped XLM-R configs failed to trace at all (dropout
over more than 2**32 elements), and no test on a small batch could show it.
"""
import importlib.util
import pathlib

import jax
import pytest

from xlm_jax.errors import ConfigError
from xlm_jax.objectives.registry import build_objectives, streams
from xlm_jax.train.aot import lower_train_step

from tests.helpers import tiny_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.py"))


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_compiles_at_its_own_batch_on_8_devices(path):
    config = _load(path)
    lowered = lower_train_step(config, jax.devices()[:8])
    memory = lowered.compile().memory_analysis()
    micro = config.train.batch_size // config.train.grad_accum_steps
    per_device = micro * config.data.seq_len * config.model.hidden_size * 4   # one f32 [tokens, hidden]
    assert memory.temp_size_in_bytes > per_device // 8   # the batch really is in the program
    text = lowered.as_text()
    for spec in streams(build_objectives(config)):    # every objective's batch, at its own size
        assert f"tensor<{spec.batch_size}x{config.data.seq_len}xi32>" in text, spec


def _mlp_constraint_lines(config, layout, rules):
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = layout
    config.mesh.rules = rules
    text = lower_train_step(config, jax.devices()[:8]).as_text()
    b, s, f = config.train.batch_size, config.data.seq_len, config.model.mlp_dim
    return [line for line in text.splitlines()
            if "sharding_constraint" in line and f"tensor<{b}x{s}x{f}x" in line]


def test_activation_constraints_act_in_the_train_step():
    """The MLP activation [batch, length, mlp] is constrained to the mesh: batch over
    (data, fsdp), and with fsdp_tp mlp over tensor. Without a mesh in context when the step
    is traced, flax drops every such constraint silently (there would be no line)."""
    config = tiny_config(batch_size=8)
    fsdp = _mlp_constraint_lines(config, (2, 4, 1), "fsdp")
    assert fsdp and all('[{"data", "fsdp"}, {}, {}]' in line for line in fsdp), fsdp
    tensor = _mlp_constraint_lines(config, (2, 2, 2), "fsdp_tp")
    assert tensor and all('[{"data", "fsdp"}, {}, {"tensor"}]' in line for line in tensor), tensor


def test_an_objective_batch_that_does_not_split_over_the_mesh_names_its_field():
    config = tiny_config(batch_size=8)
    config.objectives.xlco = 1.0
    config.xlco.batch_size, config.xlco.queue_size = 4, 64
    config.data.shards = 4
    config.mesh.data, config.mesh.rules = 8, "dp"
    with pytest.raises(ConfigError, match=r"config field `xlco.batch_size`: 4 / train.grad_accum_steps 1 = 4 "
                                          r"examples per microbatch, not a multiple of the 8 batch shards"):
        lower_train_step(config, jax.devices()[:8])
