"""Sharding is layout, not math: every (data, fsdp, tensor) mesh trains exactly like one device.

Needs 8 (fake CPU) devices: the repo-root conftest sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax starts.
"""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.helpers import (assert_updated_params_close, cached_train_setup, param_shapes, random_batch,
                           random_params, tiny_config, to_numpy)
from xlm_jax.errors import ConfigError, XlmJaxError
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.parallel.mesh import batch_sharding, batch_shards, make_mesh, mesh_shape
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.optim import make_optimizer
from xlm_jax.objectives.registry import build_objectives
from xlm_jax.train.state import state_shardings

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                                "XLA_FLAGS=--xla_force_host_platform_device_count=8 (repo-root conftest)")

LAYOUTS = [((8, 1, 1), "dp"), ((2, 4, 1), "fsdp"), ((2, 2, 2), "fsdp_tp"), ((1, 8, 1), "fsdp")]


def layout_config(dropout=0.0, grad_accum_steps=1):
    # Sizes divide by 8 (hidden, batch) and by 2 (heads, mlp, vocab) so every layout splits evenly.
    return tiny_config(batch_size=8, warmup_steps=0, dropout=dropout, grad_accum_steps=grad_accum_steps)


@pytest.fixture(scope="module")
def params():
    return random_params(layout_config(), seed=20, scale=0.1)[1]


@pytest.fixture(scope="module")
def batch():
    return random_batch(layout_config(), seed=21)


def _one_step(config, layout, rules, params, batch):
    setup = cached_train_setup(config, layout, rules)
    state, metrics = setup.step(setup.state_from(params), setup.put(batch))
    return setup, state, to_numpy(metrics)


@pytest.fixture(scope="module")
def single_device(params, batch):
    """(state, metrics) after one step on a 1-device mesh, dropout 0."""
    _, state, metrics = _one_step(layout_config(), (1, 1, 1), "fsdp", params, batch)
    return to_numpy(state), metrics


@pytest.mark.parametrize("layout, rules", LAYOUTS)
def test_same_loss_and_update_as_one_device(single_device, params, batch, layout, rules):
    base_state, base = single_device
    setup, state, metrics = _one_step(layout_config(), layout, rules, params, batch)
    assert len(setup.mesh.devices.flat) == 8
    assert float(metrics["loss"]) == pytest.approx(float(base["loss"]), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(float(base["grad_norm"]), rel=1e-5)
    assert float(metrics["mlm/masked_tokens"]) == float(base["mlm/masked_tokens"])
    assert int(metrics["nonfinite"]) == 0
    assert_updated_params_close(state.params, base_state.params, setup.config.train.learning_rate)
    # The updated state comes back with the layout it went in with.
    jax.tree.map(lambda x, s: _assert_same_layout(x.sharding, s, x.ndim), state, setup.shardings)


def test_gradient_accumulation_on_a_sharded_mesh(single_device, params, batch):
    """Microbatches keep their rows on their devices: (2,2,2) fsdp_tp, 2 microbatches of 4."""
    base_state, base = single_device
    setup, state, metrics = _one_step(layout_config(grad_accum_steps=2), (2, 2, 2), "fsdp_tp", params, batch)
    assert float(metrics["loss"]) == pytest.approx(float(base["loss"]), rel=1e-5)
    assert_updated_params_close(state.params, base_state.params, setup.config.train.learning_rate)


def test_dropout_is_the_same_on_every_layout(params, batch):
    """Dropout masks depend only on the key and an element's global index, not on the split.

    (2,2,2) fsdp_tp splits activations over the batch (data x fsdp) and attention
    probabilities over heads (tensor): if the masks depended on the layout, the loss would.
    """
    _, _, base = _one_step(layout_config(dropout=0.1), (1, 1, 1), "fsdp", params, batch)
    _, _, no_dropout = _one_step(layout_config(), (1, 1, 1), "fsdp", params, batch)
    assert abs(float(base["loss"]) - float(no_dropout["loss"])) > 1e-3   # dropout is active
    _, _, metrics = _one_step(layout_config(dropout=0.1), (2, 2, 2), "fsdp_tp", params, batch)
    assert float(metrics["loss"]) == pytest.approx(float(base["loss"]), rel=1e-5)


def _assert_same_layout(sharding, expected, ndim):
    assert sharding.is_equivalent_to(expected, ndim), (sharding, expected)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


EXPECTED_SPECS = {
    # rules -> {param path: mesh axes per dim}; layers (leading axis of scanned weights) never split
    "dp": {
        ("encoder", "layers", "layer", "intermediate", "kernel"): P(),
        ("encoder", "embeddings", "word_embeddings", "embedding"): P(),
        ("lm_head", "bias"): P(),
    },
    "fsdp": {
        ("encoder", "layers", "layer", "intermediate", "kernel"): P(None, "fsdp", None),
        ("encoder", "layers", "layer", "output", "kernel"): P(None, None, "fsdp"),
        ("encoder", "layers", "layer", "attention", "query", "kernel"): P(None, "fsdp", None, None),
        ("encoder", "embeddings", "word_embeddings", "embedding"): P(None, "fsdp"),
        ("encoder", "embeddings", "position_embeddings", "embedding"): P(None, "fsdp"),
        ("encoder", "embeddings", "LayerNorm", "scale"): P("fsdp"),
        ("lm_head", "bias"): P(),
        ("lm_head", "dense", "kernel"): P("fsdp", None),
    },
    "fsdp_tp": {
        ("encoder", "layers", "layer", "intermediate", "kernel"): P(None, "fsdp", "tensor"),
        ("encoder", "layers", "layer", "intermediate", "bias"): P(None, "tensor"),
        ("encoder", "layers", "layer", "output", "kernel"): P(None, "tensor", "fsdp"),
        ("encoder", "layers", "layer", "attention", "query", "kernel"): P(None, "fsdp", "tensor", None),
        ("encoder", "layers", "layer", "attention", "query", "bias"): P(None, "tensor", None),
        ("encoder", "layers", "layer", "attention", "output", "kernel"): P(None, "tensor", None, "fsdp"),
        ("encoder", "layers", "layer", "output_LayerNorm", "scale"): P(None, "fsdp"),
        ("encoder", "embeddings", "word_embeddings", "embedding"): P("tensor", "fsdp"),
        ("encoder", "embeddings", "token_type_embeddings", "embedding"): P(None, "fsdp"),
        ("lm_head", "bias"): P("tensor"),
        ("lm_head", "dense", "kernel"): P("fsdp", None),
    },
}


@pytest.mark.parametrize("layout, rules", [((2, 2, 2), "dp"), ((2, 4, 1), "fsdp"), ((2, 2, 2), "fsdp_tp")])
def test_params_and_moments_are_sharded_as_the_rules_say(layout, rules):
    """On meshes where every axis the rules use has size > 1, so a wrong spec cannot hide."""
    setup = cached_train_setup(layout_config(), layout, rules)
    shapes = nn.meta.unbox(param_shapes(setup.config))
    for path, spec in EXPECTED_SPECS[rules].items():
        _assert_same_layout(_get(setup.shardings.params, path), NamedSharding(setup.mesh, spec),
                            _get(shapes, path).ndim)
    if rules == "dp":   # every parameter replicated
        jax.tree.map(lambda sh, x: _assert_same_layout(sh, NamedSharding(setup.mesh, P()), x.ndim),
                     setup.shardings.params, shapes)
    # Adam moments live exactly where their params live.
    for name in ("mu", "nu"):
        moments = optax.tree.get(setup.shardings.opt_state, name)
        assert jax.tree.structure(moments) == jax.tree.structure(setup.shardings.params)
        jax.tree.map(lambda a, b, x: _assert_same_layout(a, b, x.ndim), moments, setup.shardings.params,
                     shapes)
    # Every scanned weight keeps the `layers` axis whole.
    for sharding in jax.tree.leaves(setup.shardings.params["encoder"]["layers"]):
        assert not sharding.spec or sharding.spec[0] is None
    # The batch is split over the rules' batch axes.
    expected_batch = {"dp": ("data", "fsdp", "tensor"), "fsdp": ("data", "fsdp"),
                      "fsdp_tp": ("data", "fsdp")}[rules]
    assert setup.rows.spec == P(expected_batch)
    assert batch_shards(setup.mesh, setup.rules) == int(np.prod(
        [dict(zip(("data", "fsdp", "tensor"), layout))[a] for a in expected_batch]))


def test_sharded_parameters_really_are_split(params, batch):
    """Arrays on the mesh hold 1/shards of a sharded weight per device (not a replica)."""
    setup, state, _ = _one_step(layout_config(), (2, 2, 2), "fsdp_tp", params, batch)
    kernel = state.params["encoder"]["layers"]["layer"]["intermediate"]["kernel"]
    layers, hidden, mlp = kernel.shape
    shard_shapes = {s.data.shape for s in kernel.addressable_shards}
    assert shard_shapes == {(layers, hidden // 2, mlp // 2)}
    assert len(kernel.addressable_shards) == 8


def test_create_train_state_is_layout_independent():
    """The sharded init draws the same params as a 1-device init, already in place."""
    config = layout_config()
    one = cached_train_setup(config, (1, 1, 1), "fsdp").new_state()
    setup = cached_train_setup(config, (2, 2, 2), "fsdp_tp")
    sharded = setup.new_state()
    jax.tree.map(lambda x, s: _assert_same_layout(x.sharding, s, x.ndim), sharded, setup.shardings)
    jax.tree.map(np.testing.assert_array_equal, to_numpy(sharded.params), to_numpy(one.params))
    assert int(sharded.step) == 0
    # Init scale: normal(0.02) kernels, ones/zeros LayerNorm, zero biases.
    p = to_numpy(one.params)
    assert abs(p["encoder"]["layers"]["layer"]["intermediate"]["kernel"].std() - 0.02) < 0.003
    np.testing.assert_array_equal(p["encoder"]["embeddings"]["LayerNorm"]["scale"], 1.0)
    np.testing.assert_array_equal(p["lm_head"]["bias"], 0.0)


# --------------------------------------------------------------------------------- mesh


def _mesh_config(data, fsdp, tensor):
    config = tiny_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
    return config.mesh


def test_minus_one_takes_the_remaining_devices():
    mesh = make_mesh(_mesh_config(2, -1, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert mesh_shape(_mesh_config(-1, 1, 1), 8) == (8, 1, 1)
    assert mesh_shape(_mesh_config(1, 1, -1), 8) == (1, 1, 8)
    one = make_mesh(_mesh_config(-1, 1, 1), devices=jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("sizes", [(3, 1, 1), (2, 2, 1), (2, 2, 4), (-1, 3, 1), (1, 16, -1)])
def test_mesh_that_does_not_fit_the_devices(sizes):
    with pytest.raises(ConfigError, match="`mesh`"):
        make_mesh(_mesh_config(*sizes))


def test_two_minus_one_axes():
    with pytest.raises(ConfigError, match="`mesh`"):
        make_mesh(_mesh_config(-1, -1, 1))


def test_unknown_rules_preset():
    with pytest.raises(ConfigError, match="`mesh.rules`"):
        logical_axis_rules("zero3")


def test_batch_sharding_of_each_preset():
    mesh = make_mesh(_mesh_config(2, 2, 2))
    assert batch_sharding(mesh, logical_axis_rules("dp")).spec == P(("data", "fsdp", "tensor"))
    assert batch_sharding(mesh, logical_axis_rules("fsdp_tp")).spec == P(("data", "fsdp"))
    assert batch_shards(mesh, logical_axis_rules("dp")) == 8
    assert batch_shards(mesh, logical_axis_rules("fsdp")) == 4


def test_indivisible_layout_is_an_actionable_error():
    """A vocabulary the tensor axis cannot split evenly (101 over tensor=2, padding off) must fail
    up front with an xlm_jax error naming the field to change, not a raw jax IndivisibleError."""
    config = tiny_config(vocab_size=101)
    config.model.vocab_pad_multiple = 1
    with pytest.raises(XlmJaxError, match="vocab_pad_multiple"):
        cached_train_setup(config, (2, 2, 2), "fsdp_tp").new_state()


# ------------------------------------------------------------------ padded vocabulary


def odd_vocab_config():
    """Vocabulary 102 = 2 x 51 (tensor=2 at most), padded to 128 rows; 4 heads for tensor=4."""
    return tiny_config(vocab_size=102, batch_size=8, warmup_steps=0)


def test_odd_vocabulary_trains_at_tensor_4_like_one_device():
    config = odd_vocab_config()
    _, params = random_params(config, seed=22, scale=0.1)
    batch = random_batch(config, seed=23)
    base_setup, base_state, base = _one_step(config, (1, 1, 1), "fsdp", params, batch)
    setup, state, metrics = _one_step(config, (2, 1, 4), "fsdp_tp", params, batch)
    word = ("encoder", "embeddings", "word_embeddings", "embedding")
    assert _get(setup.shardings.params, word).spec == P("tensor", "fsdp")   # 128 rows: 32 per device
    assert {s.data.shape for s in _get(state.params, word).addressable_shards} == {(32, 32)}
    assert float(metrics["loss"]) == pytest.approx(float(base["loss"]), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(float(base["grad_norm"]), rel=1e-5)
    assert float(metrics["mlm/accuracy"]) == float(base["mlm/accuracy"])
    assert_updated_params_close(state.params, base_state.params, setup.config.train.learning_rate)


def _abstract_state(config, layout, rules="fsdp_tp"):
    """state_shardings on a mesh of the layout: jax.eval_shape only, nothing allocated."""
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = layout
    mesh = make_mesh(config.mesh, jax.devices()[:int(np.prod(layout))])
    model, optimizer = MaskedLM(config.model), make_optimizer(config.train)
    return state_shardings(model, build_objectives(config), optimizer, config, mesh, logical_axis_rules(rules))


def xlmr_vocab_config(**model_overrides):
    """XLM-R's 250,002 ids on a tiny body whose heads and mlp split 8 ways."""
    config = tiny_config(num_heads=8, mlp_dim=64, vocab_size=250_002)
    for key, value in model_overrides.items():
        config.model[key] = value
    return config


@pytest.mark.parametrize("tensor", [4, 8])
def test_xlmr_vocabulary_shards_over_tensor_4_and_8(tensor):
    abstract, shardings = _abstract_state(xlmr_vocab_config(), (1, 1, tensor))
    word = ("encoder", "embeddings", "word_embeddings", "embedding")
    assert _get(abstract.params, word).shape == (250_112, 32)        # 1954 x 128
    assert _get(shardings.params, word).spec == P("tensor", "fsdp")
    assert shardings.params["lm_head"]["bias"].spec == P("tensor")


def test_indivisible_padded_vocabulary_names_vocab_pad_multiple():
    with pytest.raises(ConfigError, match=r"`model\.vocab_pad_multiple`.*250002 along 'vocab'.*4 ways"):
        _abstract_state(xlmr_vocab_config(vocab_pad_multiple=1), (1, 1, 4))
