"""All five objectives in one TrainStep: the weighted sum (loss and gradient), the same step on
8 fake devices in dp, fsdp and fsdp_tp layouts and with gradient accumulation, the non-finite
guard over params, optimizer and extra state, the "alternate" schedule's one-batch steps, the
language discriminator sharing MLM's batch, and the config errors of config.objectives.

The mix is objective_setups.MIX_WEIGHTS (unequal weights) with dropout off, from perturbed
params; two steps, so that XLCo's second step contrasts against the first step's keys.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import cached_train_setup, tiny_config, to_numpy
from tests.objectives.objective_setups import (ALL, MIX_WEIGHTS, assert_same_steps, objectives_config,
                                              perturbed_params, run_steps, step_batches)
from xlm_jax.modes.prepare import validate
from xlm_jax.errors import ConfigError
from xlm_jax.objectives.base import StepContext
from xlm_jax.objectives.registry import build_objectives, streams

COMMON = {"loss", "grad_norm", "learning_rate", "nonfinite"}
METRICS = {"mlm": ("loss", "accuracy", "masked_tokens"), "tlm": ("loss", "accuracy", "masked_tokens"),
           "xlco": ("loss", "accuracy", "mean_cosine", "vector_std"), "adversarial": ("loss", "accuracy", "lambda"),
           "pair_classification": ("loss", "accuracy", "positive_fraction")}


def metric_keys(names):
    return COMMON | {f"{name}/{key}" for name in names for key in METRICS[name]}


@pytest.fixture(scope="module")
def mix():
    """(params, three steps' batches, the history of two steps on one device)."""
    setup = cached_train_setup(objectives_config(ALL))
    params, batches = perturbed_params(setup, seed=1), step_batches(setup, 3, seed=2)
    _, history = run_steps(setup, setup.state_from(params), batches[:2])
    return params, batches, history


def mix_setup(layout=(1, 1, 1), rules="fsdp", grad_accum_steps=1):
    return cached_train_setup(objectives_config(ALL, grad_accum_steps=grad_accum_steps), layout, rules)


def test_the_loss_is_the_weighted_sum_of_every_objectives_loss(mix):
    _, batches, history = mix
    assert sorted(batches[0]) == ["mlm", "pair_classification", "tlm", "xlco"]   # no "adversarial" stream
    for _, metrics, _ in history:
        assert set(metrics) == metric_keys(ALL)
        assert int(metrics["nonfinite"]) == 0
        expected = sum(MIX_WEIGHTS[name] * float(metrics[f"{name}/loss"]) for name in ALL)
        assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-6)
        assert all(float(metrics[f"{name}/loss"]) > 0.01 for name in ALL if name != "xlco")
    assert float(history[0][1]["xlco/loss"]) == 0.0 < float(history[1][1]["xlco/loss"])   # empty queue, then not


def test_the_gradient_is_that_of_the_weighted_sum(mix):
    """grad_norm of the second step against jax.grad of sum_o w_o * loss_sum_o / normalizer_o,
    written from the objective interface alone (no microbatching, no scales, no step)."""
    _, batches, history = mix
    setup = mix_setup()
    before, metrics, _ = history[1]
    step = int(before.step)
    prepare_key = jax.random.fold_in(jax.random.key(setup.config.train.seed + 2), step)   # as train/step.py
    prepared = {name: jax.tree.map(jnp.asarray, batch) for name, batch in batches[1].items()}
    for o in setup.objectives:
        prepared[o.batch_name] = o.prepare_batch(prepared[o.batch_name], prepare_key)

    def weighted_losses(params):
        ctx = StepContext(setup.model, params, jnp.asarray(step), setup.config.train.num_steps,
                          {name: None for name in prepared}, deterministic=True)
        losses = {o.name: o.loss_terms(ctx, prepared[o.batch_name], before.extra.get(o.name))[0]["loss_sum"]
                  / o.normalizer(prepared[o.batch_name]) for o in setup.objectives}
        return sum(o.weight * losses[o.name] for o in setup.objectives), losses

    (loss, losses), grads = jax.jit(jax.value_and_grad(weighted_losses, has_aux=True))(before.params)
    for name in ALL:
        assert float(losses[name]) == pytest.approx(float(metrics[f"{name}/loss"]), rel=1e-5)
    assert float(loss) == pytest.approx(float(metrics["loss"]), rel=1e-5)
    assert float(optax.tree.norm(grads)) == pytest.approx(float(metrics["grad_norm"]), rel=1e-5)


@pytest.mark.parametrize("layout, rules", [((8, 1, 1), "dp"), ((2, 4, 1), "fsdp"), ((2, 2, 2), "fsdp_tp")])
def test_the_mix_trains_on_8_devices_like_on_one(mix, layout, rules):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (repo-root conftest)")
    params, batches, history = mix
    setup = mix_setup(layout, rules)
    assert len(setup.mesh.devices.flat) == 8
    _, sharded = run_steps(setup, setup.state_from(params), batches[:2])
    assert_same_steps(sharded, history, setup.config.train.learning_rate)


def test_two_microbatches_equal_one_batch(mix):
    """Pair negatives drawn on the global batch, normalizers over it, XLCo's keys of both
    microbatches enqueued in the batch's own row order."""
    params, batches, history = mix
    setup = mix_setup(grad_accum_steps=2)
    _, accumulated = run_steps(setup, setup.state_from(params), batches[:2])
    assert_same_steps(accumulated, history, setup.config.train.learning_rate)
    for (_, metrics, _), (_, base, _) in zip(accumulated, history):
        for name in ("mlm", "tlm"):
            assert float(metrics[f"{name}/masked_tokens"]) == float(base[f"{name}/masked_tokens"])
        assert float(metrics["pair_classification/positive_fraction"]) == float(
            base["pair_classification/positive_fraction"])


def poison(state, where):
    if where == "adversarial head":
        state.params["objectives"]["adversarial"]["out"]["bias"][0] = np.inf
    else:   # XLCo's keys, and so its loss, become NaN
        state.extra["xlco"]["key_params"]["encoder"]["embeddings"]["word_embeddings"]["embedding"][:] = np.nan


@pytest.mark.parametrize("where", ["adversarial head", "xlco key encoder"])
def test_a_nonfinite_objective_leaves_params_optimizer_and_extra_state_untouched(mix, where):
    _, batches, history = mix
    setup = mix_setup()
    before = to_numpy(history[-1][2])
    poison(before, where)
    bad = "adversarial" if where == "adversarial head" else "xlco"
    state, metrics = setup.step(jax.device_put(before, setup.shardings), jax.device_put(batches[2], setup.rows))
    metrics, after = to_numpy(metrics), to_numpy(state)
    assert int(metrics["nonfinite"]) == 1
    assert not np.isfinite(float(metrics[f"{bad}/loss"]))
    assert all(np.isfinite(float(metrics[f"{name}/loss"])) for name in ALL if name != bad)
    assert max(np.abs(x).max() for x in jax.tree.leaves(optax.tree.get(after.opt_state, "mu"))) > 0
    for part in ("params", "opt_state", "extra"):       # NaNs compare equal in place
        jax.tree.map(np.testing.assert_array_equal, getattr(after, part), getattr(before, part))
    assert int(after.extra["xlco"]["valid"]) == 32 and int(after.step) == int(before.step) + 1


def test_an_alternate_step_trains_only_the_objectives_of_its_batch(mix):
    """XLM's schedule feeds one stream per update: a TLM batch alone updates with TLM's loss only,
    and XLCo's queue, position and key encoder wait for XLCo's turn."""
    _, batches, history = mix
    setup = mix_setup()
    before = history[-1][2]
    state, metrics = setup.step(jax.device_put(before, setup.shardings),
                                jax.device_put({"tlm": batches[2]["tlm"]}, setup.rows))
    metrics, after = to_numpy(metrics), to_numpy(state)
    assert set(metrics) == metric_keys(["tlm"])
    assert float(metrics["loss"]) == pytest.approx(MIX_WEIGHTS["tlm"] * float(metrics["tlm/loss"]), rel=1e-6)
    jax.tree.map(np.testing.assert_array_equal, after.extra, before.extra)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), after.params["encoder"], before.params["encoder"])
    assert min(jax.tree.leaves(moved)) > 0


def test_an_alternate_step_leaves_the_heads_of_the_other_objectives_alone(mix):
    """The discriminator and the pair classifier get no gradient from a TLM batch; their params
    must not move (Adam's momentum from earlier steps would move them by ~2/3 of a step)."""
    _, batches, history = mix
    setup = mix_setup()
    before = history[-1][2]
    state, _ = setup.step(jax.device_put(before, setup.shardings),
                          jax.device_put({"tlm": batches[2]["tlm"]}, setup.rows))
    after = to_numpy(state)
    for name in ("adversarial", "pair_classification"):
        for (path, new), old in zip(jax.tree_util.tree_flatten_with_path(after.params["objectives"][name])[0],
                                    jax.tree.leaves(before.params["objectives"][name])):
            np.testing.assert_array_equal(new, old, err_msg=f"{name}{jax.tree_util.keystr(path)}")


def test_an_mlm_batch_alone_also_trains_the_discriminator_that_shares_it(mix):
    _, batches, history = mix
    setup = mix_setup()
    state, metrics = setup.step(jax.device_put(history[-1][2], setup.shardings),
                                jax.device_put({"mlm": batches[2]["mlm"]}, setup.rows))
    metrics = to_numpy(metrics)
    assert set(metrics) == metric_keys(["mlm", "adversarial"])
    expected = float(metrics["mlm/loss"]) + MIX_WEIGHTS["adversarial"] * float(metrics["adversarial/loss"])
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------ streams and config


def with_objectives(batch_size=8, **weights):
    config = tiny_config(batch_size=batch_size)
    config.objectives = {name: weights.get(name, 0.0) for name in ALL}
    return config


def stream_names(config):
    return [(s.name, s.kind, s.batch_size) for s in streams(build_objectives(validate(config), ["de", "en"]))]


def test_the_discriminator_reads_mlms_batch_unless_told_or_alone():
    shared = with_objectives(mlm=1.0, adversarial=1.0)
    assert stream_names(shared) == [("mlm", "blocks", 8)]
    own = with_objectives(mlm=1.0, adversarial=1.0)
    own.adversarial.share_batch = False
    own.adversarial.batch_size = 16
    assert stream_names(own) == [("mlm", "blocks", 8), ("adversarial", "blocks", 16)]
    alone = with_objectives(mlm=0.0, adversarial=1.0)
    assert stream_names(alone) == [("adversarial", "blocks", 8)]
    mixed = with_objectives(**MIX_WEIGHTS)
    mixed.xlco.queue_size = 64
    assert stream_names(mixed) == [("mlm", "blocks", 8), ("tlm", "tlm", 8), ("xlco", "pairs", 8),
                                   ("pair_classification", "pairs", 8)]


def _set(config, field, value):
    section, name = field.split(".")
    config[section][name] = value


CONFIG_ERRORS = {
    "unknown objective": ({"objectives.bogus": 1.0}, r"`objectives`: unknown objective\(s\) bogus"),
    "negative weight": ({"objectives.tlm": -1.0}, r"`objectives.tlm`: got -1.0"),
    "all weights 0": ({"objectives.mlm": 0.0}, r"`objectives`: every weight is 0"),
    "queue not a multiple of 2 x batch": ({"objectives.xlco": 1.0, "xlco.queue_size": 40},
                                          r"`xlco.queue_size`: got 40.*positive multiple of 16"),
    "queue of another xlco batch size": ({"objectives.xlco": 1.0, "xlco.batch_size": 4, "xlco.queue_size": 12},
                                         r"`xlco.queue_size`: got 12.*multiple of 8"),
    "bad tlm positions": ({"objectives.tlm": 1.0, "tlm.positions": "absolute"},
                          r"`tlm.positions`: got 'absolute'.*continuous, reset"),
    "unknown option": ({"xlco.foo": 1}, r"`xlco.foo`: unknown option"),
    "momentum of 1": ({"objectives.xlco": 1.0, "xlco.queue_size": 64, "xlco.momentum": 1.0}, r"`xlco.momentum`"),
    "xlco layer beyond the model": ({"objectives.xlco": 1.0, "xlco.queue_size": 64, "xlco.layer": 3},
                                    r"`xlco.layer`: got 3; a layer in 1..2"),
    "negative fraction of 1": ({"objectives.pair_classification": 1.0, "pair_classification.negative_fraction": 1.0},
                               r"`pair_classification.negative_fraction`"),
    "unknown lambda schedule": ({"objectives.adversarial": 1.0, "adversarial.lambda_schedule": "linear"},
                                r"`adversarial.lambda_schedule`: got 'linear'; allowed values: dann, constant"),
    "a batch size for a shared batch": ({"objectives.adversarial": 1.0, "adversarial.batch_size": 16},
                                        r"`adversarial.batch_size`: got 16, but adversarial.share_batch"),
    "unknown schedule": ({"objective_schedule": "random"}, r"`objective_schedule`: got 'random'"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_name_the_field(case):
    changes, message = CONFIG_ERRORS[case]
    config = tiny_config(batch_size=8)
    for field, value in changes.items():
        if "." in field:
            _set(config, field, value)
        else:
            config[field] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_options_of_an_objective_that_is_off_are_not_checked():
    """XLCo's default queue (131,072) is no multiple of 2 x 24: a run without XLCo must not care."""
    config = tiny_config(batch_size=24)
    assert config.objectives.xlco == 0.0 and config.xlco.queue_size % 48
    validate(config)
    config.objectives.xlco = 1.0
    with pytest.raises(ConfigError, match="`xlco.queue_size`"):
        validate(config)
