"""The hand-written backward passes (GELU, LayerNorm, output bias) against numpy in float64.

They exist for speed (fewer saved intermediates, no slow column reduction on CPU), so
each must give the gradient of the textbook formula, computed here independently.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax.models.encoder import gelu, normalize
from xlm_jax.models.masked_lm import add_bias

RNG = np.random.default_rng(0)
erf = np.vectorize(math.erf)


def test_gelu_value_and_gradient_match_numpy():
    x = np.concatenate([RNG.normal(0, 3, 997), [0.0, -8.0, 8.0, -40.0, 40.0]])
    value, vjp = jax.vjp(gelu, jnp.asarray(x, jnp.float32))
    (grad,) = vjp(jnp.ones_like(value))
    cdf = 0.5 * (1 + erf(x / np.sqrt(2)))
    np.testing.assert_allclose(value, x * cdf, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grad, cdf + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi), atol=1e-5, rtol=1e-5)
    assert np.all(np.isfinite(grad))


def numpy_layer_norm_vjp(x, scale, bias, eps, g):
    """Forward and the three gradients of y = (x - mean) / sqrt(var + eps) * scale + bias."""
    mean = x.mean(-1, keepdims=True)
    inv_std = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    x_hat = (x - mean) * inv_std
    n = x.shape[-1]
    d_hat = g * scale
    d_x = inv_std / n * (n * d_hat - d_hat.sum(-1, keepdims=True) - x_hat * (d_hat * x_hat).sum(-1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return x_hat * scale + bias, d_x, (g * x_hat).sum(axes), g.sum(axes)


def test_layer_norm_value_and_gradients_match_numpy():
    x = RNG.normal(2.0, 3.0, (3, 5, 48))
    x[0, 0] = 7.0                                       # a constant row: variance 0, eps matters
    scale, bias, g = RNG.normal(size=48), RNG.normal(size=48), RNG.normal(size=(3, 5, 48))
    expected = numpy_layer_norm_vjp(x, scale, bias, 1e-5, g)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    value, vjp = jax.vjp(lambda *a: normalize(*a, 1e-5), f32(x), f32(scale), f32(bias))
    for got, want in zip((value, *vjp(f32(g))), expected):
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_bfloat16_activations_stay_bfloat16_with_float32_statistics():
    x = jnp.asarray(RNG.normal(size=(4, 32)), jnp.bfloat16)
    ones, zeros = jnp.ones(32), jnp.zeros(32)
    value, vjp = jax.vjp(lambda x, s, b: normalize(x, s, b, 1e-5), x, ones, zeros)
    d_x, d_scale, d_bias = vjp(jnp.ones_like(value))
    assert (value.dtype, d_x.dtype, d_scale.dtype, d_bias.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32,
                                                                     jnp.float32)
    want = numpy_layer_norm_vjp(np.asarray(x, np.float64), 1.0, 0.0, 1e-5, np.ones((4, 32)))
    np.testing.assert_allclose(np.asarray(value, np.float32), want[0], atol=0.03, rtol=0.01)
    assert gelu(x).dtype == jnp.bfloat16 and jax.grad(lambda x: gelu(x).sum())(x).dtype == jnp.bfloat16


def test_add_bias_gradient_sums_over_every_leading_axis():
    x, bias = RNG.normal(size=(4, 6, 300)), RNG.normal(size=300)
    g = RNG.normal(size=(4, 6, 300))
    value, vjp = jax.vjp(add_bias, jnp.asarray(x, jnp.float32), jnp.asarray(bias, jnp.float32))
    d_x, d_bias = vjp(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(value, x + bias, atol=1e-5)
    np.testing.assert_allclose(d_x, g, atol=1e-6)
    np.testing.assert_allclose(d_bias, g.sum((0, 1)), atol=1e-4)
