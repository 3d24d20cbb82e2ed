"""The real train step lowered and compiled ahead of time, from abstract inputs.

Nothing is allocated and no data is read: the state and the batch are ShapeDtypeStructs
carrying their shardings, from the same builder a run trains with (train/builder.py). This
is how a config written for a pod is checked on a CPU machine (8 fake devices,
`XLA_FLAGS=--xla_force_host_platform_device_count=8`): if it traces, partitions and compiles
here at its own batch, the program is the one the pod runs.
"""
import jax

from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.builder import build_trainer


def train_step_inputs(config, devices=None, languages=None):
    """(jitted step, abstract state, abstract batches) of a validated `config` on a mesh of
    `devices` (default: all): every input a ShapeDtypeStruct with its sharding, each objective's
    batch at its own size. `languages` (the corpus's) size the language discriminator; without
    them it is sized as for two."""
    trainer = build_trainer(config, make_mesh(config.mesh, devices), logical_axis_rules(config.mesh.rules),
                            languages)
    batches = trainer.abstract_batches()
    # One update per call, whatever train.steps_per_call: the program a call of k repeats k times.
    return trainer.step.jitted(tuple(sorted(batches)), 1), trainer.restore_target(), batches


def lower_train_step(config, devices=None, languages=None) -> jax.stages.Lowered:
    """The train step of a validated `config` (every objective summed), lowered at each
    objective's global batch."""
    step, state, batches = train_step_inputs(config, devices, languages)
    return step.lower(state, batches)
