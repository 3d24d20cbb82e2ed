"""A checkpoint restores on another mesh and device count: orbax reshards each array into the
shardings of the restoring run (Checkpoints.restore reads into ShapeDtypeStructs that carry
them), so a run can move from 8 devices in dp to 4 devices in fsdp_tp and back.

Bit-identical state both ways (params, Adam's moments, XLCo's queue and momentum encoder),
the new layout really in place, and the next step on the new mesh equal to the step on the
old one up to float32 summation order. Also: bf16 compute keeps f32 params and Adam moments.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import cached_train_setup, to_numpy
from tests.objectives.objective_setups import (ALL, assert_same_steps, objectives_config, perturbed_params,
                                              run_steps, step_batches)
from xlm_jax.modes.prepare import validate
from xlm_jax.train.checkpoints import Checkpoints, abstract_with_shardings
from xlm_jax.train.state import state_shardings

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                                "XLA_FLAGS=--xla_force_host_platform_device_count=8 (repo-root conftest)")

DP = ((8, 1, 1), "dp")             # 8 devices, every parameter replicated
FSDP_TP = ((1, 2, 2), "fsdp_tp")   # the first 4 devices: embed over fsdp, heads / mlp / vocab over tensor


def save(workdir, state, step):
    checkpoints = Checkpoints(str(workdir), keep=2, async_save=False)
    checkpoints.save(step, state, {"next_step": step})
    checkpoints.close()


def restore_on(setup, workdir):
    """The checkpoint restored the way Run.restore_or_init does it, into `setup`'s mesh and rules."""
    abstract, shardings = state_shardings(setup.model, setup.objectives, setup.optimizer, setup.config,
                                          setup.mesh, setup.rules)
    checkpoints = Checkpoints(str(workdir), keep=2, async_save=False, read_only=True)
    state, _ = checkpoints.restore(abstract_with_shardings(abstract, shardings))
    checkpoints.close()
    return state


def assert_bit_identical_with_layout(restored, expected_host, shardings):
    """Every leaf equal bit for bit (and of the same dtype), and laid out by `shardings`."""
    paths = jax.tree_util.tree_flatten_with_path(expected_host)[0]
    assert jax.tree.structure(restored) == jax.tree.structure(expected_host)
    for (path, expected), array, sharding in zip(paths, jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        name = jax.tree_util.keystr(path)
        assert array.dtype == expected.dtype, name
        np.testing.assert_array_equal(np.asarray(array), expected, err_msg=name)
        assert array.sharding.is_equivalent_to(sharding, array.ndim), (name, array.sharding, sharding)


def shard_shape(array):
    return array.addressable_shards[0].data.shape


def test_a_dp_checkpoint_on_8_devices_restores_on_4_devices_in_fsdp_tp_and_back(tmp_path):
    """Saved after two steps of all five objectives (Adam's moments non-zero, XLCo's queue half
    full); restored on 4 devices in fsdp_tp, saved there, restored on 8 devices in dp again."""
    config = objectives_config(ALL)
    dp, tp = cached_train_setup(config, *DP), cached_train_setup(config, *FSDP_TP)
    batches = step_batches(dp, 3, seed=4)
    state, _ = run_steps(dp, dp.state_from(perturbed_params(dp, seed=3)), batches[:2])
    saved = to_numpy(state)
    assert int(saved.extra["xlco"]["valid"]) == 32 and np.abs(saved.opt_state[1][0].nu["lm_head"]["bias"]).max() > 0
    save(tmp_path / "dp", state, 2)

    on_tp = restore_on(tp, tmp_path / "dp")
    assert_bit_identical_with_layout(on_tp, saved, tp.shardings)
    # The layout really changed: 4 devices, and each holds a half or a quarter of the big arrays.
    assert on_tp.params["lm_head"]["bias"].sharding.device_set == set(jax.devices()[:4])
    mlp_kernel = on_tp.params["encoder"]["layers"]["layer"]["intermediate"]["kernel"]   # [layers, embed, mlp]
    assert shard_shape(mlp_kernel) == (2, 16, 32) and mlp_kernel.shape == (2, 32, 64)
    nu = on_tp.opt_state[1][0].nu["encoder"]["layers"]["layer"]["intermediate"]["kernel"]
    assert shard_shape(nu) == (2, 16, 32)
    assert shard_shape(on_tp.extra["xlco"]["queue"]) == (32, 32)        # queue rows over data x fsdp

    save(tmp_path / "fsdp_tp", on_tp, 2)
    back_on_dp = restore_on(dp, tmp_path / "fsdp_tp")
    assert_bit_identical_with_layout(back_on_dp, saved, dp.shardings)

    # The next step on the new mesh is the step on the old one, to float32 summation order
    # (per metric rel 1e-5; params to rel 1e-5 and 1% of the learning rate).
    _, on_dp_history = run_steps(dp, back_on_dp, batches[2:])
    _, on_tp_history = run_steps(tp, on_tp, batches[2:])
    assert float(on_dp_history[0][1]["xlco/loss"]) > 0.1
    assert_same_steps(on_tp_history, on_dp_history, config.train.learning_rate)


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state():
    """Only activations are bf16 (tests/models/test_encoder.py): the update is applied to f32
    params, and Adam's moments stay f32 after a step (bf16 params or moments would lose updates
    smaller than 1/256 of a weight)."""
    config = objectives_config(("mlm",))
    config.model.dtype = "bfloat16"
    setup = cached_train_setup(validate(config))
    _, [(before, metrics, after)] = run_steps(setup, setup.new_state(), step_batches(setup, 1, seed=5))
    assert np.isfinite(metrics["loss"]) and int(metrics["nonfinite"]) == 0
    floats = [x for x in jax.tree.leaves(after) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert len(floats) == 3 * len(jax.tree.leaves(after.params))     # params, Adam's mu and nu
    assert {x.dtype for x in floats} == {np.dtype(np.float32)}
    layer = [state.params["encoder"]["layers"]["layer"] for state in (before, after)]
    assert np.abs(layer[1]["intermediate"]["kernel"] - layer[0]["intermediate"]["kernel"]).max() > 0
