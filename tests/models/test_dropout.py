"""The dropout mask: threefry2x32 hashes cut into 16-bit draws, at the right rate.

It replaces flax's nn.Dropout for speed, so it must draw what its docstring says
(checked against a numpy threefry that reproduces the published test vectors), drop at
the requested rate, keep the expectation, and not depend on the sharding.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.config import default_config
from xlm_jax.models.dropout import Dropout, keep_mask, quantized_rate
from xlm_jax.parallel.mesh import make_mesh


ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def numpy_threefry2x32(key, x0, x1):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), written out in numpy uint32."""
    k = [np.uint32(key[0]), np.uint32(key[1])]
    k.append(k[0] ^ k[1] ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + k[0], x1 + k[1]
    for block in range(5):
        for r in ROTATIONS[4 * (block % 2):4 * (block % 2) + 4]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0, x1 = x0 + k[(block + 1) % 3], x1 + k[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def test_numpy_threefry_matches_the_published_test_vectors():
    """Random123's known answers for threefry2x32_20 (key, counter) -> output."""
    known = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
             ((2**32 - 1,) * 2, (2**32 - 1,) * 2, (0x1CB996FC, 0xBB002BE7)),
             ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
    for key, counter, expected in known:
        out = numpy_threefry2x32(key, *(np.array([c], np.uint32) for c in counter))
        assert (int(out[0][0]), int(out[1][0])) == expected


def reference_draws(key, shape):
    """The draws rebuilt in numpy: hash (0, i) for each group i of four, cut in 16-bit pieces."""
    *lead, last = shape
    groups = -(-last // 4)
    counters = np.arange(int(np.prod(lead)) * groups, dtype=np.uint32)
    key_words = np.asarray(jax.random.key_data(key))
    hi, lo = numpy_threefry2x32(key_words, np.zeros_like(counters), counters)
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
