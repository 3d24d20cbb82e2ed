"""Learning-rate schedules, the weight-decay mask and AdamW (+ clipping) against numpy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import param_shapes, tiny_config
from xlm_jax.config import default_config
from xlm_jax.train.optim import learning_rate_schedule, make_optimizer, weight_decay_mask


def _train(**fields):
    t = default_config().train
    for key, value in fields.items():
        t[key] = value
    return t


@pytest.mark.parametrize("fields, expected", [
    # warmup 0 -> 1e-3 over 10 steps, then linear 1e-3 -> 1e-4 over the remaining 100
    (dict(schedule="linear", warmup_steps=10, num_steps=110, learning_rate=1e-3, end_learning_rate=1e-4),
     {0: 0.0, 1: 1e-4, 5: 5e-4, 10: 1e-3, 35: 7.75e-4, 60: 5.5e-4, 110: 1e-4, 500: 1e-4}),
    # `power` only applies to "polynomial": linear stays linear
    (dict(schedule="linear", power=2.0, warmup_steps=10, num_steps=110, learning_rate=1e-3,
          end_learning_rate=1e-4),
     {5: 5e-4, 60: 5.5e-4}),
    # (lr - end) * (1 - t/T)^2 + end after warmup
    (dict(schedule="polynomial", power=2.0, warmup_steps=10, num_steps=110, learning_rate=1e-3,
          end_learning_rate=1e-4),
     {0: 0.0, 5: 5e-4, 10: 1e-3, 35: 6.0625e-4, 60: 3.25e-4, 110: 1e-4, 200: 1e-4}),
    # no warmup: the decay starts at the peak on step 0
    (dict(schedule="linear", warmup_steps=0, num_steps=100, learning_rate=2e-3, end_learning_rate=0.0),
     {0: 2e-3, 25: 1.5e-3, 50: 1e-3, 100: 0.0, 150: 0.0}),
    (dict(schedule="constant", warmup_steps=4, num_steps=100, learning_rate=3e-4),
     {0: 0.0, 2: 1.5e-4, 4: 3e-4, 50: 3e-4, 1000: 3e-4}),
    (dict(schedule="constant", warmup_steps=0, num_steps=100, learning_rate=3e-4),
     {0: 3e-4, 1: 3e-4, 99: 3e-4}),
    # XLM's inverse square root: warmup, then lr * sqrt(warmup / step)
    (dict(schedule="inverse_sqrt", warmup_steps=4, num_steps=100, learning_rate=1e-3),
     {0: 0.0, 2: 5e-4, 4: 1e-3, 16: 5e-4, 64: 2.5e-4, 400: 1e-4}),
    # warmup == num_steps: peak at the last step, no decay phase to divide by zero in
    (dict(schedule="linear", warmup_steps=8, num_steps=8, learning_rate=1e-3, end_learning_rate=0.0),
     {0: 0.0, 4: 5e-4, 7: 8.75e-4}),
])
def test_schedule_values(fields, expected):
    schedule = learning_rate_schedule(_train(**fields))
    for step, value in expected.items():
        got = float(schedule(step))
        assert got == pytest.approx(value, rel=1e-5, abs=1e-10), f"step {step}: {got} != {value}"


def test_schedule_is_finite_and_non_negative_everywhere():
    schedule = learning_rate_schedule(_train(schedule="polynomial", power=3.0, warmup_steps=7, num_steps=50))
    values = np.array([float(schedule(s)) for s in range(0, 80, 3)])
    assert np.all(np.isfinite(values)) and np.all(values >= 0)
    assert values.max() <= 5e-4 * (1 + 1e-6)


def test_weight_decay_mask_on_the_real_model():
    """Kernels and embeddings decay; every bias and every LayerNorm parameter does not."""
    config = tiny_config()
    config.model.num_languages = 2
    params = nn.meta.unbox(param_shapes(config, language_ids=jnp.zeros((1, config.data.seq_len), jnp.int32)))
    mask = weight_decay_mask(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    flat = {jax.tree_util.keystr(path): value
            for path, value in jax.tree_util.tree_flatten_with_path(mask)[0]}
    for path, decays in flat.items():
        names = [part.strip("'") for part in path.strip("[]").split("][")]
        is_norm = names[-2].endswith("LayerNorm")
        expected = names[-1] in ("kernel", "embedding") and not is_norm
        assert decays is expected, path
        assert names[-1] in ("kernel", "embedding", "bias", "scale"), path
    # Spot checks, including the MLM output bias and the scanned (2-D) per-layer vectors.
    assert mask["lm_head"]["bias"] is False
    assert mask["encoder"]["embeddings"]["word_embeddings"]["embedding"] is True
    assert mask["encoder"]["embeddings"]["position_embeddings"]["embedding"] is True
    assert mask["encoder"]["embeddings"]["language_embeddings"]["embedding"] is True
    layer = mask["encoder"]["layers"]["layer"]
    assert layer["intermediate"]["kernel"] is True and layer["intermediate"]["bias"] is False
    assert layer["attention"]["query"]["kernel"] is True and layer["attention"]["query"]["bias"] is False
    assert layer["output_LayerNorm"]["scale"] is False and layer["output_LayerNorm"]["bias"] is False
    # 4 embedding tables (word, position, token type, language) + 4 attention kernels
    # (query, key, value, output) + 2 feed-forward kernels + the lm_head dense kernel.
    assert sum(flat.values()) == 11


def _tiny_tree(rng):
    return {
        "dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
        "LayerNorm": {"scale": 1 + 0.1 * rng.normal(size=(4,)), "bias": rng.normal(size=(4,))},
        "embed": {"embedding": rng.normal(size=(5, 3))},
    }


def _np_adamw(params, grads_seq, t, lrs, clip_norm):
    """Textbook AdamW (Loshchilov & Hutter) with bias correction, decoupled decay, clipping."""
    decay = {("dense", "kernel"): 1.0, ("dense", "bias"): 0.0, ("LayerNorm", "scale"): 0.0,
             ("LayerNorm", "bias"): 0.0, ("embed", "embedding"): 1.0}
    p = {k: params[k[0]][k[1]].astype(np.float64) for k in decay}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for i, grads in enumerate(grads_seq):
        g = {k: grads[k[0]][k[1]].astype(np.float64) for k in decay}
        norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
        if clip_norm and norm > clip_norm:
            g = {k: x * clip_norm / norm for k, x in g.items()}
        for k in p:
            m[k] = t.b1 * m[k] + (1 - t.b1) * g[k]
            v[k] = t.b2 * v[k] + (1 - t.b2) * g[k] ** 2
            m_hat = m[k] / (1 - t.b1 ** (i + 1))
            v_hat = v[k] / (1 - t.b2 ** (i + 1))
            p[k] = p[k] - lrs[i] * (m_hat / (np.sqrt(v_hat) + t.eps) + t.weight_decay * decay[k] * p[k])
    return p


def _run_optax(params, grads_seq, t):
    optimizer = make_optimizer(t)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = optimizer.init(params)
    for grads in grads_seq:
        grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_adamw_matches_numpy(clip_norm):
    rng = np.random.default_rng(0)
    params = _tiny_tree(rng)
    # Gradient norms well above and below the clip threshold, so clipping changes the result.
    grads_seq = [jax.tree.map(lambda x, s=s: x * s, _tiny_tree(rng)) for s in (5.0, 0.05, 2.0, 0.3)]
    t = _train(learning_rate=1e-2, end_learning_rate=0.0, warmup_steps=2, num_steps=10, b1=0.8,
               b2=0.95, eps=1e-3, weight_decay=0.1, clip_norm=clip_norm, schedule="linear")
    lrs = [0.0, 5e-3, 1e-2, 1e-2 * 7 / 8]   # warmup 0 -> 1e-2 in 2 steps, then linear to 0 at step 10
    got = _run_optax(params, grads_seq, t)
    expected = _np_adamw(params, grads_seq, t, lrs, clip_norm)
    for (a, b), value in expected.items():
        np.testing.assert_allclose(np.asarray(got[a][b]), value, rtol=1e-5, atol=1e-6, err_msg=f"{a}/{b}")
    other = _np_adamw(params, grads_seq, t, lrs, 0.0 if clip_norm else 1.0)
    assert max(np.abs(other[k] - expected[k]).max() for k in expected) > 1e-4   # clipping mattered


def test_weight_decay_only_on_masked_leaves():
    """Zero gradients: only decayed leaves move, by exactly -lr * wd * p."""
    rng = np.random.default_rng(1)
    params = _tiny_tree(rng)
    zeros = jax.tree.map(np.zeros_like, params)
    t = _train(learning_rate=0.1, warmup_steps=0, num_steps=10, weight_decay=0.5, clip_norm=1.0,
               schedule="constant")
    got = _run_optax(params, [zeros], t)
    np.testing.assert_allclose(np.asarray(got["dense"]["kernel"]), params["dense"]["kernel"] * (1 - 0.05),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got["embed"]["embedding"]), params["embed"]["embedding"] * 0.95,
                               rtol=1e-6)
    for a, b in (("dense", "bias"), ("LayerNorm", "scale"), ("LayerNorm", "bias")):
        np.testing.assert_allclose(np.asarray(got[a][b]), params[a][b].astype(np.float32), rtol=0, atol=0)


def test_clip_by_global_norm():
    """With a huge eps Adam is ~linear in the gradient, so clipping shows up directly."""
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}   # global norm 5
    assert float(optax.tree.norm(g)) == pytest.approx(5.0)
    params = {"a": np.zeros(2), "b": np.zeros((1, 2))}
    t = _train(learning_rate=1.0, warmup_steps=0, num_steps=10, schedule="constant", b1=0.0, b2=0.0,
               eps=1e6, weight_decay=0.0, clip_norm=2.5)
    got = _run_optax(params, [g], t)
    # update = -lr * g_clipped / (|g_clipped| + eps), g_clipped = g * 2.5 / 5
    np.testing.assert_allclose(np.asarray(got["a"]), -np.array([1.5, 0.0]) / (1.5 + 1e6), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["b"]), -np.array([[0.0, 2.0]]) / (2.0 + 1e6), rtol=1e-5)
    t.clip_norm = 10.0   # above the norm: untouched
    got = _run_optax(params, [g], t)
    np.testing.assert_allclose(np.asarray(got["b"]), -np.array([[0.0, 4.0]]) / (4.0 + 1e6), rtol=1e-5)
