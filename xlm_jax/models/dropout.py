"""Dropout that draws a quarter of the random hashes flax's does.

flax's `nn.Dropout` draws one uniform float per element. With jax's partitionable
threefry, every 32-bit draw costs a whole threefry2x32 evaluation whose two output
words are xor-ed into one. On 2 CPU cores those hashes took ~9% of an XLM-R train step
(13M draws per step at 6 layers, batch 16 x 128).

Here each evaluation yields 64 bits, which become four 16-bit draws. Each draw is
compared with round(rate * 2**16). The mask of an element depends only on the key
and the element's index in the global array, so it is the same however the array
is sharded (tests/parallel/test_layouts.py).

The hash counter is that index as 64 bits, (hi, lo), built in uint32 arithmetic
(jax x64 stays off): attention-probability dropout at XLM-R's batch 8192 spans
[8192, heads, 512, 512], far beyond 2**32 elements. Below 2**32, hi is 0. The index
is exact up to 2**64 elements; one axis may be at most 2**32 long (its coordinates
are uint32). Other PRNG implementations (e.g. rbg) take `jax.random.bits`, which has
no size limit but follows that implementation's own sharding behaviour.

The rate is quantized to 1/65536: 0.1 becomes 0.1000061. Kept values are scaled by
1 / (1 - quantized rate), so the expected output still equals the input exactly.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

DRAW_LEVELS = 2 ** 16
DRAWS_PER_HASH = 4  # 64 bits of one threefry2x32 evaluation, 16 bits per draw
WORD = 2 ** 32


def quantized_rate(rate: float) -> float:
    """The drop probability actually used for `rate`."""
    return round(rate * DRAW_LEVELS) / DRAW_LEVELS


def _add64(a, b):
    """(hi, lo) + (hi, lo) mod 2**64, in uint32 words."""
    lo = a[1] + b[1]
    return a[0] + b[0] + (lo < b[1]).astype(jnp.uint32), lo


def _mul64(x: jax.Array, c: int):
    """(hi, lo) of uint32 `x` times the int `c`, mod 2**64, via 16-bit limbs."""
    c_lo, c_hi = np.uint32(c % WORD), np.uint32(c // WORD % WORD)
    x0, x1, c0, c1 = x & 0xFFFF, x >> 16, c_lo & 0xFFFF, c_lo >> 16
    low, cross, high = x0 * c0, x0 * c1, x1 * c1
    mid = cross + x1 * c0                      # a wrap here is worth 2**48: 2**16 in hi
    lo = low + (mid << 16)
    hi = high + (mid >> 16) + ((mid < cross).astype(jnp.uint32) << 16)
    return hi + (lo < low).astype(jnp.uint32) + x * c_hi, lo


def index_words(coords, shape):
    """(hi, lo) uint32 words of the row-major index in `shape` of the elements at `coords`.

    `coords` holds one broadcastable uint32 array per axis. The longest suffix of axes
    with fewer than 2**32 elements is indexed in uint32 as is; each leading axis adds
    coordinate * stride in 64 bits (on its own small array, before broadcasting).
    """
    if any(n > WORD for n in shape):
        raise ValueError(f"dropout over shape {shape}: an axis is longer than 2**32")
    split, inner_size = len(shape), 1
    while split and inner_size * shape[split - 1] < WORD:
        split, inner_size = split - 1, inner_size * shape[split - 1]
    inner, stride = jnp.zeros((), jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        if axis >= split:
            inner = inner + jnp.asarray(coords[axis], jnp.uint32) * np.uint32(stride)
        stride *= shape[axis]
    outer = (jnp.zeros((), jnp.uint32),) * 2
    for axis in range(split):
        outer = _add64(outer, _mul64(jnp.asarray(coords[axis], jnp.uint32),
                                     math.prod(shape[axis + 1:])))
    return _add64(outer, (jnp.zeros((), jnp.uint32), inner))


def threefry_at(key: jax.Array, coords, shape):
    """threefry2x32 output words of the elements at `coords` of `shape`, counter (hi, lo)."""
    hi, lo = jnp.broadcast_arrays(*index_words(coords, shape))
    k1, k2 = jax.random.key_data(key)
    return threefry2x32_p.bind(k1, k2, hi, lo)


def _draws(key: jax.Array, shape) -> jax.Array:
    """uint32 draws in [0, 2**16) of `shape`, four from each threefry2x32 evaluation.

    The hashes run over [..., ceil(last / 4)] and their 16-bit pieces are laid out
    along a new minor axis, so the leading (batch) axes keep their sharding.
    """
    *lead, last = shape
    groups = (*lead, -(-last // DRAWS_PER_HASH))
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key of the default implementation
    if str(jax.random.key_impl(key)) == "threefry2x32":
        coords = [jax.lax.broadcasted_iota(jnp.uint32, [n if a == axis else 1 for a, n in
                                                        enumerate(groups)], axis)
                  for axis in range(len(groups))]
        hi, lo = threefry_at(key, coords, groups)
    else:  # another PRNG implementation: two 32-bit draws per group from its own bits
        hi, lo = jax.random.bits(key, (2, *groups), jnp.uint32)
    pieces = jnp.stack([hi & 0xFFFF, hi >> 16, lo & 0xFFFF, lo >> 16], axis=-1)
    return pieces.reshape(*lead, groups[-1] * DRAWS_PER_HASH)[..., :last]


def keep_mask(key: jax.Array, shape, rate: float) -> jax.Array:
    """bool mask of `shape`, each element True with probability 1 - quantized_rate(rate)."""
    return _draws(key, shape) >= np.uint32(round(rate * DRAW_LEVELS))


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout(rate)(x, deterministic)`, using the "dropout" rng stream."""
    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0:
            return x
        rate = quantized_rate(self.rate)
        if rate >= 1:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        return jnp.where(keep, x * jnp.asarray(1 / (1 - rate), x.dtype), jnp.zeros_like(x))
