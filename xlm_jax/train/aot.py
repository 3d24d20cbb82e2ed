"""The real train step lowered and compiled ahead of time, from abstract inputs.

Nothing is allocated and no data is read: the state and the batch are ShapeDtypeStructs
carrying their shardings. This is how a config written for a pod is checked on a CPU
machine (8 fake devices, `XLA_FLAGS=--xla_force_host_platform_device_count=8`): if it
traces, partitions and compiles here at its own batch, the program is the one the pod runs.
"""
import jax

from xlm_jax.config import validate
from xlm_jax.data.pipeline import batch_spec
from xlm_jax.models.heads import MaskedLM
from xlm_jax.parallel.mesh import batch_sharding, make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.checkpoints import abstract_with_shardings
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import state_shardings
from xlm_jax.train.step import make_train_step


def lower_train_step(config, devices=None) -> jax.stages.Lowered:
    """`make_train_step` of `config` on a mesh of `devices` (default: all), lowered at the
    config's global batch."""
    validate(config)
    mesh = make_mesh(config.mesh, devices)
    rules = logical_axis_rules(config.mesh.rules)
    model, optimizer = MaskedLM(config.model), make_optimizer(config.train)
    abstract_state, shardings = state_shardings(model, optimizer, config, mesh, rules)
    rows = batch_sharding(mesh, rules)
    batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
             for name, (shape, dtype) in batch_spec(config).items()}
    step = make_train_step(model, optimizer, config, mesh, rules, shardings, rows)
    return step.lower(abstract_with_shardings(abstract_state, shardings), batch)
