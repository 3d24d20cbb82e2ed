"""The dropout mask: jax's own threefry hashes cut into 16-bit draws, at the right rate.

It replaces flax's nn.Dropout for speed, so it must draw what the docstring says it
draws (checked against jax.extend.random.threefry_2x32 called on explicit counters),
drop at the requested rate, keep the expectation, and not depend on the sharding.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.config import default_config
from xlm_jax.models.dropout import Dropout, keep_mask, quantized_rate
from xlm_jax.parallel.mesh import make_mesh


def reference_draws(key, shape):
    """The 16-bit draws, rebuilt in numpy from threefry2x32 evaluated at counters 0..n-1."""
    *lead, last = shape
    groups = -(-last // 4)
    count = int(np.prod(lead)) * groups
    counters = np.arange(count, dtype=np.uint32)
    # threefry_2x32 hashes the pairs (count[i], count[n/2 + i]) and returns both words, hi then lo.
    words = np.asarray(threefry_2x32(jax.random.key_data(key), np.concatenate([np.zeros_like(counters), counters])))
    hi, lo = words[:count], words[count:]
    pieces = np.stack([hi & 0xFFFF, hi >> 16, lo & 0xFFFF, lo >> 16], axis=-1)
    return pieces.reshape(*lead, groups * 4)[..., :last]


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 7), (4, 1)])
def test_mask_is_threefry_cut_into_16_bit_draws(shape):
    key = jax.random.key(42)
    expected = reference_draws(key, shape) >= round(0.3 * 2 ** 16)
    np.testing.assert_array_equal(np.asarray(keep_mask(key, shape, 0.3)), expected)


def test_drop_rate_and_expectation():
    """1M draws at rate 0.1: the dropped fraction within 4 binomial standard errors of 0.1,
    in each of the four 16-bit slots of a hash, and the mean of dropout(ones) within 4 s.e. of 1."""
    rate, shape = 0.1, (1024, 1024)
    dropped = ~np.asarray(keep_mask(jax.random.key(7), shape, rate))
    p = quantized_rate(rate)
    assert abs(p - rate) < 1e-5
    for slot in range(4):
        column = dropped[:, slot::4]
        se = np.sqrt(p * (1 - p) / column.size)
        assert abs(column.mean() - p) < 4 * se, (slot, column.mean())
    out = Dropout(rate).apply({}, jnp.ones(shape), deterministic=False,
                              rngs={"dropout": jax.random.key(8)})
    values = np.unique(np.asarray(out))
    np.testing.assert_allclose(values, [0.0, 1 / (1 - p)], rtol=1e-6)
    se = np.sqrt(p / (1 - p) / out.size)   # std of one output is sqrt(p / (1 - p))
    assert abs(float(out.mean()) - 1) < 4 * se


def test_masks_differ_by_key_and_repeat_for_the_same_key():
    a, b = (keep_mask(jax.random.key(s), (64, 64), 0.5) for s in (1, 2))
    np.testing.assert_array_equal(keep_mask(jax.random.key(1), (64, 64), 0.5), a)
    assert 0.4 < float(jnp.mean(a != b)) < 0.6


def test_deterministic_rate_zero_and_rate_one():
    x = jnp.arange(12.0).reshape(3, 4)
    rngs = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs), x)
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs), 0 * x)


def test_keeps_the_dtype_and_reads_the_dropout_stream():
    x = jnp.ones((8, 16), jnp.bfloat16)
    out = Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert out.dtype == jnp.bfloat16
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        Dropout(0.25).apply({}, x, deterministic=False)


def test_other_prng_implementations_and_raw_keys_work():
    """An rbg key takes jax.random.bits; a raw uint32 key is the default (threefry) one."""
    shape = (256, 256)
    rbg = np.asarray(keep_mask(jax.random.key(5, impl="rbg"), shape, 0.2))
    se = np.sqrt(0.2 * 0.8 / rbg.size)
    assert abs((~rbg).mean() - 0.2) < 4 * se
    raw = keep_mask(jax.random.PRNGKey(5), shape, 0.2)
    np.testing.assert_array_equal(raw, keep_mask(jax.random.key(5), shape, 0.2))


def test_too_many_elements_is_a_clear_error():
    with pytest.raises(ValueError, match="at most 2\\*\\*32"):
        keep_mask(jax.random.key(0), (2 ** 16, 2 ** 16), 0.1)


def test_mask_is_the_same_however_the_array_is_sharded():
    """The mask depends on an element's global index only: 8 devices give the 1-device mask."""
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (repo-root conftest)")
    config = default_config().mesh
    config.data, config.fsdp, config.tensor = 2, 2, 2
    mesh = make_mesh(config)
    shape, key = (8, 4, 6, 10), jax.random.key(11)
    expected = keep_mask(key, shape, 0.1)
    spec = PartitionSpec(("data", "fsdp"), "tensor")
    sharded = jax.jit(lambda k: keep_mask(k, shape, 0.1), out_shardings=NamedSharding(mesh, spec))(key)
    assert len(sharded.addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(expected))
