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
from xlm_jax.models.dropout import Dropout, index_words, keep_mask, quantized_rate, threefry_at
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


# The shape of the hash groups of attention-probability dropout at XLM-R's batch 8192:
# [batch, heads, 512, 512 / 4], 2**35 groups, 25.8G elements.
BIG_GROUPS = (8192, 16, 512, 128)


def _unravel(index, shape):
    coords = []
    for n in reversed(shape):
        index, c = divmod(index, n)
        coords.append(c)
    return coords[::-1]


@pytest.mark.parametrize("shape", [BIG_GROUPS, (65537, 65537), (3, 2 ** 32), (2 ** 31, 2 ** 31, 3),
                                   (7, 2 ** 20, 1, 2 ** 20, 5), (2 ** 16, 2 ** 16)])
def test_index_words_are_the_64_bit_row_major_index(shape):
    """hi, lo == the exact index >> 32, & 0xFFFFFFFF at corners, the 2**32 boundary,
    every axis boundary and random points, against python ints / numpy uint64."""
    total = int(np.prod(shape, dtype=object))
    flats = {0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, total - 2, total - 1}
    for axis in range(len(shape)):           # the last element of a block and the next one
        block = int(np.prod(shape[axis:], dtype=object))
        flats |= {block - 1, block, 3 * block - 1, 3 * block} if block < total else {block - 1}
    rng = np.random.default_rng(0)
    flats |= {int(i) for i in rng.integers(0, total, 50, dtype=np.uint64)}
    flats = sorted(f for f in flats if 0 <= f < total)
    coords = np.array([_unravel(f, shape) for f in flats], dtype=np.uint64).T
    hi, lo = index_words([jnp.asarray(c, jnp.uint32) for c in coords], shape)
    expected = np.array(flats, dtype=np.uint64)
    np.testing.assert_array_equal(np.asarray(hi), (expected >> np.uint64(32)).astype(np.uint32))
    np.testing.assert_array_equal(np.asarray(lo), (expected & np.uint64(2**32 - 1)).astype(np.uint32))


def test_index_words_broadcast_coordinates_of_a_block():
    """Per-axis coordinate arrays broadcast: a [2, 3, 4] block of a big shape at once."""
    shape = (9000, 7, 2 ** 29)
    axes = [np.array([4000, 8999]), np.array([0, 3, 6]), np.array([0, 1, 2 ** 29 - 2, 2 ** 29 - 1])]
    hi, lo = index_words([jnp.asarray(axes[0], jnp.uint32)[:, None, None],
                          jnp.asarray(axes[1], jnp.uint32)[None, :, None],
                          jnp.asarray(axes[2], jnp.uint32)[None, None, :]], shape)
    a, b, c = (x.astype(np.uint64) for x in np.meshgrid(*axes, indexing="ij"))
    expected = (a * np.uint64(7) + b) * np.uint64(2 ** 29) + c
    np.testing.assert_array_equal(np.asarray(hi), (expected >> np.uint64(32)).astype(np.uint32))
    np.testing.assert_array_equal(np.asarray(lo), (expected & np.uint64(2**32 - 1)).astype(np.uint32))


def test_big_arrays_trace_and_lower_without_allocating():
    """Dropout over attention probabilities at batch 8192 (25.8G elements) traces and
    lowers: the mask has the input's shape, for threefry and rbg keys."""
    shape = (*BIG_GROUPS[:3], 512)
    x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    apply = lambda x, k: Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": k})
    out = jax.eval_shape(apply, x, jax.random.key(0))
    assert out.shape == shape and out.dtype == jnp.bfloat16
    for key in (jax.random.key(0), jax.random.key(0, impl="rbg")):
        lowered = jax.jit(lambda k: keep_mask(k, shape, 0.1)).lower(key)
        assert lowered.out_info.shape == shape and lowered.out_info.dtype == jnp.bool_


def test_hashes_past_2_32_use_the_64_bit_index_as_counter():
    """The hashes of rows of a 2**35-group array, past and across the 2**32 boundary, are
    numpy threefry2x32 of (index >> 32, index & 0xFFFFFFFF) of each group's global index."""
    key = jax.random.key(42)
    boundary = _unravel(2 ** 32, BIG_GROUPS)              # [1024, 0, 0, 0]
    rows = [(boundary[0] - 1, 15, 511), tuple(boundary[:3]), (8191, 15, 511), (5000, 7, 300)]
    b, h, r = (jnp.asarray([row[i] for row in rows], jnp.uint32)[:, None] for i in range(3))
    g = jnp.arange(BIG_GROUPS[-1], dtype=jnp.uint32)[None, :]
    out_hi, out_lo = threefry_at(key, [b, h, r, g], BIG_GROUPS)
    index = np.array([[((row[0] * 16 + row[1]) * 512 + row[2]) * 128 + j for j in range(128)]
                      for row in rows], dtype=np.uint64)
    assert index.min() < 2 ** 32 <= index.max()
    expected = numpy_threefry2x32(np.asarray(jax.random.key_data(key)),
                                  (index >> np.uint64(32)).astype(np.uint32),
                                  (index & np.uint64(2**32 - 1)).astype(np.uint32))
    np.testing.assert_array_equal(np.asarray(out_hi), expected[0])
    np.testing.assert_array_equal(np.asarray(out_lo), expected[1])


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
