"""The train state, created directly sharded on the mesh.

params hold the model and the objectives' trainable heads (params["objectives"]); extra holds
what objectives keep beside them (a momentum encoder, a queue), sharded by its logical axes
and checkpointed like the rest.
"""
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from xlm_jax.errors import ConfigError
from xlm_jax.objectives.registry import init_extra, init_heads
from xlm_jax.parallel.mesh import on_mesh


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    extra: Any = flax.struct.field(default_factory=dict)


def _init_variables(model, config, rng):
    seq_len = config.data.seq_len
    dummy_ids = jnp.full((1, seq_len), 4, jnp.int32)
    dummy_positions = jnp.zeros((1, 1), jnp.int32)
    kwargs = {}
    if config.model.num_languages:
        kwargs["language_ids"] = jnp.zeros((1, seq_len), jnp.int32)
    return model.init({"params": rng, "dropout": rng}, dummy_ids, dummy_positions, **kwargs)


def init_params(model, objectives, config, rng):
    """Boxed params of the model and, under "objectives", of the objectives' heads."""
    params = _init_variables(model, config, rng)["params"]
    heads = init_heads(objectives, jax.random.fold_in(rng, 1))
    return {**params, "objectives": heads} if heads else params


# Which config field sets the size of each logical axis, for errors a user can act on.
AXIS_FIELDS = {"vocab": "model.vocab_pad_multiple", "embed": "model.hidden_size", "mlp": "model.mlp_dim",
               "heads": "model.num_heads", "kv": "model.hidden_size / model.num_heads",
               "layers": "model.num_layers"}


def check_divisible(boxed_params, mesh: Mesh, rules, config) -> None:
    """Every sharded dim must split evenly over its mesh axes; else name the config field."""
    flat = flax.traverse_util.flatten_dict(boxed_params, sep="/")
    for path, boxed in flat.items():
        mesh_axes = nn.logical_to_mesh_axes(boxed.names, rules)
        for size, name, axes in zip(boxed.value.shape, boxed.names, mesh_axes):
            axes = (axes,) if isinstance(axes, str) else (axes or ())
            ways = math.prod(mesh.shape[a] for a in axes)
            if size % ways:
                raise ConfigError(
                    f"config field `{AXIS_FIELDS.get(name, name)}`: parameter {path} has {size} "
                    f"along '{name}', which mesh.rules={config.mesh.rules!r} splits {ways} ways over "
                    f"mesh axes {axes} {dict(mesh.shape)}; use a multiple of {ways}, or another "
                    f"mesh or rules preset")


def _new_state(boxed_params, optimizer, objectives) -> TrainState:
    params = nn.meta.unbox(boxed_params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      extra=nn.meta.unbox(init_extra(objectives, boxed_params)))


def layout_of_state(init_boxed, optimizer: optax.GradientTransformation, mesh: Mesh, rules, config=None,
                    objectives=()):
    """(abstract TrainState, sharding of every leaf) for the params `init_boxed(rng)` creates
    (with logical partitioning) and the objectives' extra state, without allocating anything;
    with `config`, uneven splits are a ConfigError naming the field."""

    def init_abstract(rng):
        boxed = init_boxed(rng)
        return (boxed, init_extra(objectives, boxed)), _new_state(boxed, optimizer, objectives)

    (boxed, boxed_extra), abstract_state = jax.eval_shape(init_abstract, jax.random.key(0))
    if config is not None:
        check_divisible(boxed, mesh, rules, config)
    param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())

    # Optimizer moments mirror the params' shardings; step counts are replicated.
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract_state.opt_state, param_shardings,
        transform_non_params=lambda _: replicated)
    extra_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_extra), mesh, rules)
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                           extra=extra_shardings)
    return abstract_state, shardings


def state_shardings(model, objectives, optimizer: optax.GradientTransformation, config, mesh: Mesh, rules):
    """(abstract state, sharding of every leaf) of the model's train state under `objectives`."""
    return layout_of_state(lambda rng: init_params(model, objectives, config, rng), optimizer, mesh, rules,
                           config, objectives)


def create_train_state(model, objectives, optimizer, config, mesh: Mesh, rules, shardings) -> TrainState:
    """Initializes params, optimizer and extra state where they live: no host copy of the model."""

    def init(rng):
        return _new_state(init_params(model, objectives, config, rng), optimizer, objectives)

    return jax.jit(on_mesh(init, mesh, rules), out_shardings=shardings)(jax.random.key(config.train.seed))


def model_params(params):
    """The model's part of params, without the objectives' heads: what evaluators, exports and
    notebooks read."""
    return {name: value for name, value in params.items() if name != "objectives"}


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def train_state_from_params(params, optimizer, shardings, objectives=()) -> TrainState:
    """A step-0 state around given (e.g. imported) params, placed with the state's shardings;
    the objectives' extra state starts from them (a momentum encoder is a copy)."""

    def init(p):
        return _new_state(p, optimizer, objectives)

    return jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)(params)
