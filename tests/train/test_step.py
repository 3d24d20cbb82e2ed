"""The jitted train/eval steps on one device: loss arithmetic, accumulation, non-finite guard."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import (assert_updated_params_close, cached_train_setup, np_forward,
                           np_mean_cross_entropy, random_batch, random_params, tiny_config, to_numpy)
from xlm_jax.models.heads import MaskedLM
from xlm_jax.objectives.mlm import mlm_loss_terms
from xlm_jax.train.optim import learning_rate_schedule


def step_config(grad_accum_steps=1):
    # warmup 0: the first update already has the peak learning rate, so params move.
    return tiny_config(batch_size=8, warmup_steps=0, grad_accum_steps=grad_accum_steps)


@pytest.fixture(scope="module")
def setups():
    """Jitted steps on a 1-device mesh, one per grad_accum_steps, compiled on first use."""
    return lambda grad_accum_steps=1: cached_train_setup(step_config(grad_accum_steps))


@pytest.fixture(scope="module")
def params():
    return random_params(step_config(), seed=0, scale=0.1)[1]


@pytest.fixture(scope="module")
def batch():
    # Padded rows, and zero-weight slots in even rows only: microbatches hold different
    # numbers of real slots, so a mean of per-microbatch means would be wrong.
    return random_batch(step_config(), seed=1, num_predictions=4)


def _gathered_reference_logits(params, batch, config):
    logits, _ = np_forward(params, batch["input_ids"], config.model)
    return np.take_along_axis(logits, batch["masked_positions"][..., None], axis=1)


def test_loss_and_metrics_match_numpy(setups, params, batch):
    setup = setups(1)
    logits = _gathered_reference_logits(params, batch, setup.config)
    weights = batch["masked_weights"]
    assert 0 < weights.sum() < weights.size   # some slots are empty
    expected_loss = np_mean_cross_entropy(logits, batch["masked_ids"], weights)
    expected_acc = float(((logits.argmax(-1) == batch["masked_ids"]) * weights).sum() / weights.sum())

    _, metrics = setup.step(setup.state_from(params), setup.put(batch))
    metrics = to_numpy(metrics)
    assert float(metrics["loss"]) == pytest.approx(expected_loss, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(expected_acc, abs=1e-6)
    assert float(metrics["masked_tokens"]) == weights.sum()
    assert int(metrics["nonfinite"]) == 0
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3)


def test_one_step_is_one_adamw_update_on_mean_gradient(setups, params, batch):
    """New params == optax update with the gradient of the mean loss over real slots."""
    setup = setups(1)
    model = MaskedLM(setup.config.model)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}

    def mean_loss(p):
        logits = model.apply({"params": p}, jb["input_ids"], jb["masked_positions"])
        terms = mlm_loss_terms(logits, jb["masked_ids"], jb["masked_weights"])
        return terms["loss_sum"] / terms["count"]

    @jax.jit
    def reference_update(p):
        grads = jax.grad(mean_loss)(p)
        updates, _ = setup.optimizer.update(grads, setup.optimizer.init(p), p)
        return optax.tree.norm(grads), optax.apply_updates(p, updates)

    grad_norm, expected = reference_update(params)

    state, metrics = setup.step(setup.state_from(params), setup.put(batch))
    assert float(metrics["grad_norm"]) == pytest.approx(float(grad_norm), rel=1e-5)
    assert int(state.step) == 1
    assert_updated_params_close(state.params, expected, setup.config.train.learning_rate)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), to_numpy(state.params), to_numpy(params))
    assert all(m > 0 for m in jax.tree.leaves(moved))   # every parameter was updated


def test_zero_weight_slots_are_ignored(setups, params, batch):
    """Changing the target and position of an empty slot changes nothing."""
    setup = setups(1)
    other = {k: v.copy() for k, v in batch.items()}
    empty = other["masked_weights"] == 0
    assert empty.any()
    other["masked_ids"][empty] = 7
    other["masked_positions"][empty] = 5
    state_a, metrics_a = setup.step(setup.state_from(params), setup.put(batch))
    state_b, metrics_b = setup.step(setup.state_from(params), setup.put(other))
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
    jax.tree.map(np.testing.assert_array_equal, to_numpy(state_a.params), to_numpy(state_b.params))


@pytest.mark.parametrize("grad_accum_steps", [2, 4])
def test_gradient_accumulation_matches_one_big_batch(setups, params, batch, grad_accum_steps):
    base_state, base = setups(1).step(setups(1).state_from(params), setups(1).put(batch))
    setup = setups(grad_accum_steps)
    state, metrics = setup.step(setup.state_from(params), setup.put(batch))
    base, metrics = to_numpy(base), to_numpy(metrics)
    assert float(metrics["loss"]) == pytest.approx(float(base["loss"]), rel=1e-6)
    assert float(metrics["masked_tokens"]) == float(base["masked_tokens"])
    assert float(metrics["accuracy"]) == pytest.approx(float(base["accuracy"]), abs=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(base["grad_norm"]), rel=1e-5)
    assert_updated_params_close(state.params, base_state.params, setup.config.train.learning_rate)


def test_learning_rate_and_step_counter_advance(setups, params, batch):
    setup = setups(1)
    schedule = learning_rate_schedule(setup.config.train)
    state = setup.state_from(params)
    rates = []
    for _ in range(3):
        state, metrics = setup.step(state, setup.put(batch))
        rates.append(float(metrics["learning_rate"]))
    assert int(state.step) == 3
    np.testing.assert_allclose(rates, [float(schedule(i)) for i in range(3)], rtol=1e-6)
    np.testing.assert_allclose(rates, [1e-3, 1e-3 * 99 / 100, 1e-3 * 98 / 100], rtol=1e-5)


@pytest.mark.parametrize("poison", ["params", "batch"])
def test_nonfinite_step_leaves_state_unchanged(setups, params, batch, poison):
    """A NaN parameter or an inf weight in the batch: nonfinite=1, params and moments kept."""
    setup = setups(1)
    # One good step first, so the optimizer moments are non-zero and worth protecting.
    state, _ = setup.step(setup.state_from(params), setup.put(batch))
    before = to_numpy(state)
    bad_batch = {k: v.copy() for k, v in batch.items()}
    if poison == "params":
        before.params["lm_head"]["bias"][3] = np.nan
    else:
        bad_batch["masked_weights"][1, 0] = np.inf
    state = jax.device_put(before, setup.shardings)
    state, metrics = setup.step(state, setup.put(bad_batch))
    assert int(metrics["nonfinite"]) == 1
    assert not np.isfinite(float(metrics["loss"])) or not np.isfinite(float(metrics["grad_norm"]))
    after = to_numpy(state)
    assert max(np.abs(x).max() for x in jax.tree.leaves(optax.tree.get(after.opt_state, "mu"))) > 0
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    if poison == "batch":
        # The next finite batch trains normally from the untouched state.
        state, metrics = setup.step(state, setup.put(batch))
        assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))
        moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), to_numpy(state.params), before.params)
        assert max(jax.tree.leaves(moved)) > 0


def test_eval_step_matches_train_step_loss(setups, params, batch):
    setup = setups(1)
    evaluate = setup.eval_step()
    state = setup.state_from(params)
    terms = to_numpy(evaluate(state.params, setup.put(batch)))
    _, metrics = setup.step(state, setup.put(batch))
    assert float(terms["count"]) == float(batch["masked_weights"].sum())
    assert float(terms["loss_sum"] / terms["count"]) == pytest.approx(float(metrics["loss"]), rel=1e-6)
    assert float(terms["correct"] / terms["count"]) == pytest.approx(float(metrics["accuracy"]), abs=1e-6)
