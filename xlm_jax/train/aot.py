"""The real train step lowered and compiled ahead of time, from abstract inputs.

Nothing is allocated and no data is read: the state and the batch are ShapeDtypeStructs
carrying their shardings. This is how a config written for a pod is checked on a CPU
machine (8 fake devices, `XLA_FLAGS=--xla_force_host_platform_device_count=8`): if it
traces, partitions and compiles here at its own batch, the program is the one the pod runs.
"""
import jax

from xlm_jax.config import validate
from xlm_jax.data.streams import batch_spec
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.objectives.registry import build_objectives, streams
from xlm_jax.parallel.mesh import batch_sharding, make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.checkpoints import abstract_with_shardings
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.run import check_batch_layout
from xlm_jax.train.state import state_shardings
from xlm_jax.train.step import TrainStep


def train_step_inputs(config, devices=None, languages=None):
    """(jitted step, abstract state, abstract batches) of `config` on a mesh of `devices` (default:
    all): every input a ShapeDtypeStruct with its sharding, each objective's batch at its own size.
    `languages` (the corpus's) size the language discriminator; without them it is sized as for two."""
    validate(config)
    mesh = make_mesh(config.mesh, devices)
    rules = logical_axis_rules(config.mesh.rules)
    check_batch_layout(config, mesh, rules)
    model, optimizer = MaskedLM(config.model), make_optimizer(config.train)
    objectives = build_objectives(config, languages or ["language_0", "language_1"])
    abstract_state, shardings = state_shardings(model, objectives, optimizer, config, mesh, rules)
    rows = batch_sharding(mesh, rules)
    batches = {stream: {name: jax.ShapeDtypeStruct(shape, dtype, sharding=rows) for name, (shape, dtype) in spec.items()}
               for stream, spec in batch_spec(streams(objectives), config).items()}
    step = TrainStep(model, objectives, optimizer, config, mesh, rules, shardings, rows)
    # One update per call, whatever train.steps_per_call: the program a call of k repeats k times.
    return step.jitted(tuple(sorted(batches)), 1), abstract_with_shardings(abstract_state, shardings), batches


def lower_train_step(config, devices=None, languages=None) -> jax.stages.Lowered:
    """The train step of `config` (every objective summed), lowered at each objective's global batch."""
    step, state, batches = train_step_inputs(config, devices, languages)
    return step.lower(state, batches)
