"""The in-batch translation ranking (xlco.key_encoder=shared: LaBSE, mSimCSE) and collapse reporting.

References are independent of the step: the bidirectional softmax with an additive margin
written in float64 numpy from the LaBSE paper, sentence vectors from helpers.np_forward
(mean over the real tokens of layer `depth`), and variance from numpy's own np.std.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import cached_train_setup, np_forward, tiny_config, to_numpy
from tests.objectives.objective_setups import run_steps, step_batches
from xlm_jax.modes.prepare import validate
from xlm_jax.errors import ConfigError
from xlm_jax.objectives.contrastive import collapse_metrics, infonce_terms, ranking_terms, vector_terms

BATCH, TEMPERATURE, MARGIN = 8, 0.1, 0.3


def numpy_ranking(x, y, temperature, margin, weights=None):
    """(loss sum, correct count) of LaBSE's loss in float64: both directions of every pair."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scores = x @ y.T
    logits = (scores - margin * np.eye(len(x))) / temperature
    weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    loss = correct = 0.0
    for matrix, cosines in ((logits, scores), (logits.T, scores.T)):     # x -> y, then y -> x
        for i, row in enumerate(matrix):
            loss += weights[i] * (np.log(np.exp(row - row.max()).sum()) + row.max() - row[i])
            correct += weights[i] * float(cosines[i, i] > np.delete(cosines[i], i).max())
    return loss, correct


def unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.mark.parametrize("margin, weighted", [(0.0, False), (MARGIN, False), (MARGIN, True)])
def test_ranking_loss_matches_numpy(margin, weighted):
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(6, 16)))
    y = unit(x + 0.8 * rng.normal(size=(6, 16)))          # near their pair, mostly
    weights = rng.uniform(0.2, 1.0, 6) if weighted else None
    terms = to_numpy(ranking_terms(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), TEMPERATURE, margin,
                                   None if weights is None else jnp.asarray(weights, jnp.float32)))
    loss, correct = numpy_ranking(x, y, TEMPERATURE, margin, weights)
    assert float(terms["loss_sum"]) == pytest.approx(loss, rel=1e-5)
    assert float(terms["correct"]) == pytest.approx(correct, rel=1e-6)
    assert float(terms["count"]) == pytest.approx(2 * (6 if weights is None else weights.sum()), rel=1e-6)
    assert 0 < correct < (12 if weights is None else 2 * weights.sum())   # some directions right, some wrong


def test_the_margin_raises_the_loss_and_never_changes_what_is_correct():
    rng = np.random.default_rng(4)
    x, y = (jnp.asarray(unit(rng.normal(size=(5, 8))), jnp.float32) for _ in range(2))
    plain, margin = ranking_terms(x, y, 0.2, 0.0), ranking_terms(x, y, 0.2, 0.3)
    assert float(margin["loss_sum"]) > float(plain["loss_sum"])
    assert float(margin["correct"]) == float(plain["correct"])


def test_infonce_without_a_queue_contrasts_the_batch_alone():
    rng = np.random.default_rng(6)
    queries, keys = (jnp.asarray(rng.normal(size=(6, 8)), jnp.float32) for _ in range(2))
    positives = jnp.concatenate([keys[3:], keys[:3]])
    without = to_numpy(infonce_terms(queries, positives, None, None, 0.5, keys))
    empty = to_numpy(infonce_terms(queries, positives, jnp.zeros((4, 8)), jnp.asarray(0), 0.5, keys))
    assert float(without["loss_sum"]) == pytest.approx(float(empty["loss_sum"]), rel=1e-6) and without["loss_sum"] > 0


# ------------------------------------------------------------------- collapse metrics


def test_collapse_metrics_against_numpy_and_exact_over_parts():
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(12, 16)) + 3.0        # not centred: mean cosine well above 0
    u = unit(vectors)
    whole = to_numpy(collapse_metrics(vector_terms(jnp.asarray(vectors, jnp.float32))))
    cosines = u @ u.T
    assert float(whole["mean_cosine"]) == pytest.approx(cosines[~np.eye(12, dtype=bool)].mean(), rel=1e-5)
    assert float(whole["vector_std"]) == pytest.approx(u.std(0).mean() * 4.0, rel=1e-4)   # sqrt(16) = 4
    parts = [vector_terms(jnp.asarray(vectors[k::3], jnp.float32)) for k in range(3)]   # 3 microbatches
    summed = jax.tree.map(lambda *a: sum(a), *parts)
    for key, value in to_numpy(collapse_metrics(summed)).items():
        assert float(value) == pytest.approx(float(whole[key]), rel=1e-4), key


def test_one_vector_for_every_sentence_is_a_collapse_and_isotropic_vectors_are_not():
    same = np.tile(np.random.default_rng(8).normal(size=(1, 32)), (20, 1))
    collapsed = to_numpy(collapse_metrics(vector_terms(jnp.asarray(same, jnp.float32))))
    assert float(collapsed["vector_std"]) < 1e-3 and float(collapsed["mean_cosine"]) == pytest.approx(1.0, abs=1e-5)
    spread = to_numpy(collapse_metrics(vector_terms(jnp.asarray(np.random.default_rng(9).normal(size=(400, 32)),
                                                                 jnp.float32))))
    assert 0.9 < float(spread["vector_std"]) < 1.1 and abs(float(spread["mean_cosine"])) < 0.02


# ------------------------------------------------------------------- the shared encoder in the real step


def shared_config(grad_accum_steps=1, pooling="mean"):
    config = tiny_config(num_layers=3, batch_size=BATCH, warmup_steps=0, grad_accum_steps=grad_accum_steps)
    config.objectives.update(mlm=0.0, xlco=1.0)
    config.xlco.update(key_encoder="shared", pooling=pooling, queue_size=0, normalize=True, temperature=TEMPERATURE,
                       margin=MARGIN, layer=2)
    return validate(config)


def numpy_vectors(setup, params, ids, depth):
    """Mean over the real tokens of layer `depth` (numpy forward of the model's params), unit length."""
    states = np_forward(params, ids, setup.config.model)[1][depth]
    mask = (np.asarray(ids) != setup.config.model.pad_token_id)[..., None]
    return unit((states * mask).sum(1) / mask.sum(1))


def expected_loss(setup, params, batch, rows=None):
    pairs = batch["xlco"]
    src, tgt = (np.asarray(pairs[k]) if rows is None else np.asarray(pairs[k])[rows] for k in ("src_ids", "tgt_ids"))
    x, y = numpy_vectors(setup, params, src, 2), numpy_vectors(setup, params, tgt, 2)
    loss, _ = numpy_ranking(x, y, TEMPERATURE, MARGIN)
    return loss / (2 * len(x))


@pytest.fixture(scope="module")
def shared_run():
    setup = cached_train_setup(shared_config())
    batches = step_batches(setup, 2, seed=11)
    return setup, batches, run_steps(setup, setup.new_state(), batches)[1]


def test_the_step_trains_the_in_batch_ranking_loss_of_mean_pooled_vectors(shared_run):
    setup, batches, history = shared_run
    for batch, (before, metrics, _) in zip(batches, history):
        assert float(metrics["xlco/loss"]) == pytest.approx(expected_loss(setup, before.params, batch), rel=1e-4)
    assert "xlco" not in history[0][0].extra       # no copy, no queue


def test_gradients_reach_the_tokens_only_the_target_side_has(shared_run):
    """Tokens that occur only in the tgt sentences get a gradient: the key side is not detached."""
    setup, batches, _ = shared_run
    pairs = batches[0]["xlco"]
    only_target = sorted(set(np.unique(pairs["tgt_ids"])) - set(np.unique(pairs["src_ids"])) - {1})
    assert only_target
    objective = setup.objectives[0]
    from xlm_jax.objectives.base import StepContext
    params = setup.new_state().params

    def loss(p):
        ctx = StepContext(setup.model, p, jnp.asarray(0), 1, {"xlco": jax.random.key(0)}, deterministic=True)
        return objective.loss_terms(ctx, jax.tree.map(jnp.asarray, pairs), None)[0]["loss_sum"]

    grads = to_numpy(jax.grad(loss)(params))
    table = grads["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert np.abs(table[only_target]).sum(1).min() > 0


def test_eight_devices_contrast_the_global_batch_like_one(shared_run):
    """Negatives span every device's rows: 8 devices give one device's losses and updates."""
    setup, batches, history = shared_run
    sharded = cached_train_setup(shared_config(), (2, 2, 2), "fsdp_tp")
    state = sharded.state_from(history[0][0].params)
    _, sharded_history = run_steps(sharded, state, batches)
    for (_, metrics, after), (_, base, base_after) in zip(sharded_history, history):
        for key in ("xlco/loss", "xlco/accuracy", "xlco/mean_cosine", "xlco/vector_std", "grad_norm"):
            assert float(metrics[key]) == pytest.approx(float(base[key]), rel=1e-5, abs=1e-6), key


def test_under_accumulation_the_negatives_are_each_microbatchs_own(shared_run):
    """Documented in objectives/xlco.py: with grad_accum_steps = 2 the loss is the mean of the two
    microbatches' losses (rows k, k + 2, ...), each contrasting its own pairs only."""
    setup, batches, history = shared_run
    accumulated = cached_train_setup(shared_config(grad_accum_steps=2))
    params = history[0][0].params
    _, accumulated_history = run_steps(accumulated, accumulated.state_from(params), batches[:1])
    per_micro = [expected_loss(setup, params, batches[0], np.arange(k, BATCH, 2)) for k in range(2)]
    assert float(accumulated_history[0][1]["xlco/loss"]) == pytest.approx(np.mean(per_micro), rel=1e-4)
    assert float(accumulated_history[0][1]["xlco/loss"]) != pytest.approx(float(history[0][1]["xlco/loss"]), rel=1e-3)


def test_a_batch_of_one_sentence_collapses_and_the_log_says_so(shared_run, capsys, tmp_path):
    """Every pair the same sentence: the objective's metrics show a collapse and its warning names it."""
    setup, batches, history = shared_run
    pairs = dict(batches[0]["xlco"])
    pairs["src_ids"] = np.tile(pairs["src_ids"][:1], (BATCH, 1))
    pairs["tgt_ids"] = pairs["src_ids"].copy()
    _, collapsed = run_steps(setup, setup.state_from(history[0][0].params), [{"xlco": pairs}])
    metrics = {k.split("/", 1)[1]: float(v) for k, v in collapsed[0][1].items() if k.startswith("xlco/")}
    assert metrics["vector_std"] < 1e-3 and metrics["mean_cosine"] > 0.999
    objective = setup.objectives[0]
    (warning,) = objective.warnings(metrics)
    assert "collapsed" in warning and "xlco.collapse_std" in warning
    healthy = {k.split("/", 1)[1]: float(v) for k, v in history[0][1].items() if k.startswith("xlco/")}
    assert objective.warnings(healthy) == []
    # the train loop's log: a healthy step passes quietly, the collapsed one is named with its step
    from xlm_jax.modes.metrics_log import MetricsLog
    log = MetricsLog(str(tmp_path), setup.config, 2, setup.objectives)
    for step, metrics in ((1, history[0][1]), (2, collapsed[0][1])):
        log.add(step, metrics, ["xlco"])
        log.log_window(step)
    log.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith("warning at step 2: xlco's sentence vectors have collapsed")


CONFIG_ERRORS = {
    "unknown pooling": ({"xlco.pooling": "max"}, r"`xlco.pooling`: got 'max'"),
    "unknown key encoder": ({"xlco.key_encoder": "frozen"}, r"`xlco.key_encoder`: got 'frozen'"),
    "shared with a queue": ({"xlco.queue_size": 64}, r"`xlco.queue_size`: got 64; a shared key encoder"),
    "margin without normalizing": ({"xlco.normalize": False}, r"`xlco.margin`: .*xlco.normalize=True"),
    "margin with the momentum encoder": ({"xlco.key_encoder": "momentum", "xlco.queue_size": 64},
                                         r"`xlco.margin`: .*key_encoder=shared"),
    "momentum encoder without negatives": ({"xlco.key_encoder": "momentum", "xlco.margin": 0.0},
                                           r"`xlco.queue_size`: with no queue and no batch_negatives"),
    "margin out of range": ({"xlco.margin": 2.5}, r"`xlco.margin`: got 2.5"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_name_the_field(case):
    overrides, message = CONFIG_ERRORS[case]
    config = tiny_config(num_layers=3, batch_size=BATCH)
    config.objectives.update(mlm=0.0, xlco=1.0)
    config.xlco.update(key_encoder="shared", pooling="mean", queue_size=0, normalize=True, margin=MARGIN)
    for field, value in overrides.items():
        section, name = field.split(".")
        config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)
