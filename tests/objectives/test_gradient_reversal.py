"""The language-adversarial objective's gradient-reversal layer and lambda schedule (DANN).

reverse_gradient is the identity forward and -lambda x the gradient backward; in the
objective that means the discriminator's head trains on the plain loss while the encoder
gets exactly -lambda times the gradient it would get from it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import PAD, random_ids, random_params, tiny_config
from xlm_jax.modes.prepare import validate
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.objectives.adversarial import LanguageDiscriminator, dann_lambda, reverse_gradient
from xlm_jax.objectives.base import StepContext
from xlm_jax.objectives.registry import build_objectives


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0, 2.5])
def test_forward_is_identity_and_backward_is_minus_lambda_times_the_gradient(lam):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    upstream = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    out, vjp = jax.vjp(reverse_gradient, x, jnp.float32(lam))
    np.testing.assert_array_equal(out, x)
    grad_x, grad_lam = vjp(upstream)
    np.testing.assert_array_equal(grad_x, -np.float32(lam) * np.asarray(upstream))
    assert float(grad_lam) == 0.0        # lambda is a schedule, not something to train


def test_reversal_composes_under_jit_and_grad():
    """d/dx sum(w * reverse(x)) = -lam * w, also inside jit with a traced lambda."""
    rng = np.random.default_rng(1)
    x, w = (jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for _ in range(2))
    grad = jax.jit(jax.grad(lambda x, lam: jnp.sum(w * reverse_gradient(x, lam))))(x, jnp.float32(0.6))
    np.testing.assert_array_equal(grad, -np.float32(0.6) * np.asarray(w))


def test_dann_lambda_schedule():
    def numpy_dann(p, lambda_max):
        return lambda_max * (2.0 / (1.0 + np.exp(-10.0 * p)) - 1.0)

    assert float(dann_lambda(0.0, 0.8)) == 0.0
    for p in (0.01, 0.1, 0.25, 0.5, 0.9):
        assert float(dann_lambda(jnp.float32(p), 0.8)) == pytest.approx(numpy_dann(p, 0.8), rel=1e-6)
    assert float(dann_lambda(0.1, 1.0)) == pytest.approx(2 / (1 + np.exp(-1)) - 1, rel=1e-6)   # 0.4621
    assert float(dann_lambda(1.0, 0.8)) == pytest.approx(0.8, rel=2e-4)      # 0.8 * 0.99991
    values = [float(dann_lambda(p, 1.0)) for p in np.linspace(0, 1, 11)]
    assert values == sorted(values)                                           # rises monotonically


def adversarial_config(schedule="dann", lambda_max=0.7):
    config = tiny_config(batch_size=4, num_steps=100)
    config.objectives.mlm = 0.0
    config.objectives.adversarial = 1.0
    config.adversarial.lambda_schedule = schedule
    config.adversarial.lambda_max = lambda_max
    return validate(config)


@pytest.mark.parametrize("schedule", ["dann", "constant"])
def test_strength_follows_the_configured_schedule(schedule):
    (objective,) = build_objectives(adversarial_config(schedule), ["de", "en"])
    for step in (0, 30, 100):
        expected = 0.7 if schedule == "constant" else 0.7 * (2 / (1 + np.exp(-10 * step / 100)) - 1)
        assert float(objective.strength(jnp.asarray(step))) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_the_encoder_gets_minus_lambda_times_the_discriminator_gradient():
    """Grads of the objective's loss vs. the same loss without reversal, written out here:
    mean over real tokens of the last layer -> discriminator -> cross-entropy on `language`."""
    config = adversarial_config()
    (objective,) = build_objectives(config, ["de", "en", "fr"])
    assert objective.batch_name == "adversarial"       # MLM is off: it reads a stream of its own
    model, params = random_params(config, seed=3, scale=0.1)
    head = jax.tree.map(lambda x: x.value, objective.init_head(jax.random.key(4)),
                        is_leaf=lambda x: hasattr(x, "value"))
    params = {**params, "objectives": {"adversarial": head}}
    rng = np.random.default_rng(5)
    ids = random_ids(rng, 4, config.data.seq_len, config.model.vocab_size, lengths=[16, 9, 12, 5])
    batch = {"input_ids": jnp.asarray(ids), "language": jnp.asarray([0, 2, 1, 2], jnp.int32)}
    step = jnp.asarray(30)
    lam = 0.7 * (2 / (1 + np.exp(-3.0)) - 1)

    def objective_loss(p):
        ctx = StepContext(model, p, step, config.train.num_steps, {"adversarial": None}, deterministic=True)
        return objective.loss_terms(ctx, batch, None)[0]["loss_sum"]

    def plain_loss(p):
        _, states = model.apply({"params": p}, batch["input_ids"], method=MaskedLM.hidden_states)
        real = (batch["input_ids"] != PAD).astype(jnp.float32)[..., None]
        pooled = (states[-1] * real).sum(1) / real.sum(1)
        logits = LanguageDiscriminator(config.model.hidden_size, 3).apply(
            {"params": p["objectives"]["adversarial"]}, pooled)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["language"]).sum()

    (loss, ours), (expected, plain) = (jax.jit(jax.value_and_grad(f))(params) for f in (objective_loss, plain_loss))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    jax.tree.map(np.testing.assert_array_equal, ours["objectives"], plain["objectives"])
    largest = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(plain["encoder"]))
    assert largest > 1e-4
    encoder = jax.tree_util.tree_flatten_with_path(ours["encoder"])[0]
    for (path, g), reference in zip(encoder, jax.tree.leaves(plain["encoder"])):
        # To float32 noise of sums over tokens (attention's key bias has a gradient of ~0 + noise).
        np.testing.assert_allclose(g, -lam * np.asarray(reference), rtol=1e-5, atol=1e-6 * largest,
                                   err_msg=jax.tree_util.keystr(path))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(ours["lm_head"]))
