"""The one place a trainer is assembled: model, objectives, optimizer, sharded state, train step.

Training, evaluation (restoring a run's state), fine-tuning on the pretraining objective
(Data-Transfer), `--mode=plan` and AOT compilation, the benchmarks and the studies all call
`build_trainer`, so what they compile is the program a run trains with (MaxText's
train_compile and train share their builder the same way). Nothing here reads data or
writes files: `abstract_state` is shapes and shardings, and `new_state()` is the one
allocation.
"""
import dataclasses
from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding

from xlm_jax.config import validate as validate_fields
from xlm_jax.data.checks import check_data
from xlm_jax.data.streams import PAIR_KINDS, StreamSpec, batch_spec
from xlm_jax.errors import ConfigError
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.objectives.base import Objective
from xlm_jax.objectives.registry import build_objectives, check_objectives, streams
from xlm_jax.parallel.mesh import batch_sharding, batch_shards
from xlm_jax.train.checkpoints import abstract_with_shardings
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import TrainState, create_train_state, state_shardings, train_state_from_params
from xlm_jax.train.step import TrainStep

# Before a corpus names its languages, a two-language discriminator (a few KiB) stands in.
PLACEHOLDER_LANGUAGES = ("language_0", "language_1")


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What a training step needs, built once from a config on a mesh."""
    config: Any
    mesh: Mesh
    rules: tuple
    model: MaskedLM
    objectives: list[Objective]
    optimizer: optax.GradientTransformation
    abstract_state: TrainState        # ShapeDtypeStructs: nothing allocated
    shardings: TrainState             # where every leaf of the state lives
    rows: NamedSharding               # where a batch's rows live
    step: TrainStep

    @property
    def streams(self) -> list[StreamSpec]:
        """The data streams the objectives read, one per distinct batch."""
        return streams(self.objectives)

    def new_state(self) -> TrainState:
        """A freshly initialized state, created where it lives (no host copy of the model)."""
        return create_train_state(self.model, self.objectives, self.optimizer, self.config, self.mesh,
                                  self.rules, self.shardings)

    def state_from_params(self, params) -> TrainState:
        """A step-0 state around given (imported, or a subject's) params."""
        return train_state_from_params(params, self.optimizer, self.shardings, self.objectives)

    def restore_target(self) -> TrainState:
        """The abstract state with its shardings: what a checkpoint is restored into."""
        return abstract_with_shardings(self.abstract_state, self.shardings)

    def abstract_batches(self) -> dict:
        """Every stream's batch as ShapeDtypeStructs with the rows' sharding: the AOT step's input."""
        return {stream: {name: jax.ShapeDtypeStruct(shape, dtype, sharding=self.rows)
                         for name, (shape, dtype) in spec.items()}
                for stream, spec in batch_spec(self.streams, self.config).items()}


def validate(config):
    """The config as the engine reads it: the schema's checks, then the data section's and each
    active objective's, by their own code; a ConfigError names the first bad field. (The
    evaluators and a plan target are checked above the engine: xlm_jax/modes/prepare.validate.)"""
    validate_fields(config)
    check_objectives(config)
    check_data(config, reads_pairs=any(spec.kind in PAIR_KINDS for spec in streams(build_objectives(config))))
    return config


def check_batch_layout(config, mesh, rules) -> None:
    """Every objective's batch splits into whole microbatches over the mesh's batch shards and
    over the processes; else a ConfigError naming the batch size's field."""
    t = config.train
    shards = batch_shards(mesh, rules)
    for objective in build_objectives(config):
        own = objective.options.batch_size and objective.batch_name == objective.name
        field = f"{objective.name}.batch_size" if own else "train.batch_size"
        size = objective.batch_size
        per_micro, rest = divmod(size, t.grad_accum_steps)
        if rest or per_micro % shards:
            raise ConfigError(
                f"config field `{field}`: {size} / train.grad_accum_steps {t.grad_accum_steps} = "
                f"{size / t.grad_accum_steps:g} examples per microbatch, not a multiple of the {shards} "
                f"batch shards of mesh {dict(mesh.shape)} (rules {config.mesh.rules!r})")
        if size % jax.process_count():
            raise ConfigError(f"config field `{field}`: {size} is not divisible by the "
                              f"{jax.process_count()} processes")


def build_trainer(config, mesh: Mesh, rules, languages=None) -> Trainer:
    """The trainer of a validated `config` on `mesh` with logical-axis `rules`; `languages` (the
    corpus's) size the language discriminator, PLACEHOLDER_LANGUAGES before the corpus is read."""
    check_batch_layout(config, mesh, rules)
    model, optimizer = MaskedLM(config.model), make_optimizer(config.train)
    objectives = build_objectives(config, list(languages or PLACEHOLDER_LANGUAGES))
    abstract_state, shardings = state_shardings(model, objectives, optimizer, config, mesh, rules)
    rows = batch_sharding(mesh, rules)
    step = TrainStep(model, objectives, optimizer, config, mesh, rules, shardings, rows)
    return Trainer(config, mesh, rules, model, objectives, optimizer, abstract_state, shardings, rows, step)
