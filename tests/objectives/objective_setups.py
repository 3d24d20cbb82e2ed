"""Builders shared by the objective tests: configs of any objective mix, random batches of their
streams, params that make every leaf matter, and a step runner that keeps host copies."""
import jax
import numpy as np
import pytest

from tests.helpers import assert_updated_params_close, tiny_config, to_numpy
from xlm_jax.benchmarks.train_step import random_stream_batch
from xlm_jax.modes.prepare import validate
from xlm_jax.objectives.registry import streams

ALL = ("mlm", "tlm", "xlco", "adversarial", "pair_classification")
# Unequal weights, so a step that ignored them (or applied one objective's to another) shows.
MIX_WEIGHTS = {"mlm": 1.0, "tlm": 0.5, "xlco": 2.0, "adversarial": 0.3, "pair_classification": 0.7}
QUEUE_SIZE = 64     # 4 steps of XLCo's 2 x 8 keys


def objectives_config(names=ALL, dropout=0.0, grad_accum_steps=1):
    """Objectives `names` at MIX_WEIGHTS on the tiny model, whose sizes all split 8 ways; XLCo's
    momentum 0.6 (not 0.9999), so its key encoder visibly follows the model."""
    config = tiny_config(batch_size=8, warmup_steps=0, dropout=dropout, grad_accum_steps=grad_accum_steps)
    config.objectives = {name: MIX_WEIGHTS[name] if name in names else 0.0 for name in ALL}
    config.xlco.update(queue_size=QUEUE_SIZE, momentum=0.6)
    return validate(config)


def perturbed_params(setup, seed):
    """The setup's own init plus noise on every leaf: biases and LayerNorms that are 0 and 1 at
    init would hide a forward pass that drops or swaps them."""
    rng = np.random.default_rng(seed)
    params = to_numpy(setup.new_state().params)
    return jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(np.float32), params)


def step_batches(setup, num_steps, seed):
    """A different random batch of every stream of the setup's objectives at every step (host)."""
    rng = np.random.default_rng(seed)
    return [{s.name: random_stream_batch(s, setup.config, rng) for s in streams(setup.objectives)}
            for _ in range(num_steps)]


def run_steps(setup, state, batches):
    """(last state, [(state before, metrics, state after)] as host copies: the step donates its input)."""
    history = []
    for batch in batches:
        before = to_numpy(state)
        state, metrics = setup.step(state, jax.device_put(batch, setup.rows))
        history.append((before, to_numpy(metrics), to_numpy(state)))
    return state, history


# The fixture's [CLS] vectors are nearly one vector (mean cosine 0.9998), so the spread summed over
# microbatches is a float32 difference of near-equal sums: exact in algebra, to ~1e-4 in float32.
RELATIVE_TOLERANCE = {"xlco/vector_std": 1e-3}


def assert_same_steps(history, base_history, learning_rate):
    """Every metric of every step to rel 1e-5 (but RELATIVE_TOLERANCE); params and XLCo's state
    after the last step close."""
    for (_, metrics, _), (_, base, _) in zip(history, base_history):
        assert set(metrics) == set(base)
        for key, value in base.items():
            tolerance = RELATIVE_TOLERANCE.get(key, 1e-5)
            assert float(metrics[key]) == pytest.approx(float(value), rel=tolerance, abs=1e-6), (
                key, float(metrics[key]), float(value))
    state, base_state = history[-1][2], base_history[-1][2]
    assert_updated_params_close(state.params, base_state.params, learning_rate)
    if "xlco" in base_state.extra:   # the same keys in the same slots; the key encoder moved alike
        xlco, base_xlco = state.extra["xlco"], base_state.extra["xlco"]
        assert int(xlco["valid"]) == int(base_xlco["valid"]) and int(xlco["position"]) == int(base_xlco["position"])
        np.testing.assert_allclose(xlco["queue"], base_xlco["queue"], rtol=1e-4, atol=1e-4)
        assert_updated_params_close(xlco["key_params"], base_xlco["key_params"], learning_rate)
