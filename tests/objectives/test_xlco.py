"""InfoXLM's cross-lingual contrast: InfoNCE against numpy, the momentum encoder, the FIFO queue
(its order across real steps, on one device and sharded) and its exact checkpoint round trip.

The references are independent of the step: numpy InfoNCE written from the InfoXLM paper
(log-softmax over [q.k+, q.queue^T] / tau, the positive first), and key vectors computed by
helpers.np_forward (float64 numpy) from the key encoder's params.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import cached_train_setup, np_forward, tiny_config, to_numpy
from tests.objectives.objective_setups import run_steps, step_batches
from xlm_jax.modes.prepare import validate
from xlm_jax.objectives.contrastive import infonce_terms
from xlm_jax.objectives.xlco import momentum_update
from xlm_jax.train.checkpoints import Checkpoints, abstract_with_shardings
from xlm_jax.train.state import state_shardings

BATCH, QUEUE, MOMENTUM, TEMPERATURE = 8, 48, 0.6, 0.25     # the queue takes 3 steps of 2 x 8 keys


def numpy_infonce(queries, positives, queue, valid, temperature):
    """(mean loss, accuracy) of InfoNCE in float64: each query's positive at index 0 of the logits,
    then the queue's first `valid` keys."""
    q, k, negatives = (np.asarray(a, np.float64) for a in (queries, positives, queue[:valid]))
    logits = np.concatenate([(q * k).sum(-1, keepdims=True), q @ negatives.T], axis=1) / temperature
    top = logits.max(1, keepdims=True)
    log_softmax = logits - (top + np.log(np.exp(logits - top).sum(1, keepdims=True)))
    hits = logits[:, 0] > (logits[:, 1:].max(1) if valid else -np.inf)
    return float(-log_softmax[:, 0].mean()), float(hits.mean())


@pytest.mark.parametrize("valid", [10, 4, 1])
def test_infonce_matches_numpy_and_ignores_unwritten_slots(valid):
    rng = np.random.default_rng(valid + 2)
    queries = rng.normal(size=(6, 8))
    positives = 0.7 * queries + rng.normal(size=(6, 8))        # nearer than the negatives, mostly
    queue = rng.normal(size=(10, 8))
    queue[valid:] = 50.0 * rng.normal(size=(10 - valid, 8))   # would dominate the loss if read
    terms = to_numpy(infonce_terms(*(jnp.asarray(a, jnp.float32) for a in (queries, positives, queue)),
                                   jnp.asarray(valid), 0.3))
    loss, accuracy = numpy_infonce(queries, positives, queue, valid, 0.3)
    assert float(terms["count"]) == 6
    assert float(terms["loss_sum"]) / 6 == pytest.approx(loss, rel=1e-5)
    assert float(terms["correct"]) / 6 == accuracy
    assert 0 < accuracy < 1                    # some positives lose to a real negative, some win


def test_batch_negatives_are_the_other_pairs_keys_never_the_querys_own_or_its_translation():
    """Queries x_1..x_3, y_1..y_3 with keys in the same order: for x_i the positive is y_i's key,
    and the batch negatives are the keys of x_j, y_j for j != i (numpy, by hand)."""
    rng = np.random.default_rng(5)
    n, dim, valid = 6, 8, 3
    queries, keys, queue = rng.normal(size=(n, dim)), rng.normal(size=(n, dim)), rng.normal(size=(7, dim))
    positives = np.concatenate([keys[n // 2:], keys[:n // 2]])
    terms = to_numpy(infonce_terms(*(jnp.asarray(a, jnp.float32) for a in (queries, positives, queue)),
                                   jnp.asarray(valid), 0.5, jnp.asarray(keys, jnp.float32)))
    losses, hits = [], []
    for i in range(n):
        pair = {i % (n // 2), i % (n // 2) + n // 2}                 # x_i and y_i: not negatives of either
        negatives = np.concatenate([keys[[j for j in range(n) if j not in pair]], queue[:valid]])
        logits = np.concatenate([[queries[i] @ positives[i]], negatives @ queries[i]]) / 0.5
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0])
        hits.append(logits[0] > logits[1:].max())
    assert float(terms["loss_sum"]) == pytest.approx(float(np.sum(losses)), rel=1e-5)
    assert float(terms["correct"]) == float(np.sum(hits))


def test_infonce_with_an_empty_queue_is_zero():
    """Only the positive remains: log-softmax over one logit is exactly 0, and it is always 'correct'."""
    rng = np.random.default_rng(0)
    queries, positives, queue = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((5, 8), (5, 8), (16, 8)))
    terms = to_numpy(infonce_terms(queries, positives, queue, jnp.asarray(0), 0.25))
    assert float(terms["loss_sum"]) == 0.0
    assert float(terms["correct"]) == 5.0


def test_momentum_update_is_an_exponential_moving_average():
    rng = np.random.default_rng(1)
    key = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": {"c": rng.normal(size=5).astype(np.float32)}}
    query = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), key)
    updated = to_numpy(momentum_update(jax.tree.map(jnp.asarray, key), jax.tree.map(jnp.asarray, query), 0.9))
    expected = jax.tree.map(lambda k, q: 0.9 * k.astype(np.float64) + 0.1 * q, key, query)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updated, expected)


# ------------------------------------------------------------------- XLCo in the real step


def xlco_config(dropout, projection):
    """MLM + XLCo on a 3-layer model, so the key encoder (layer 0 -> 2 of 3) is a real truncation;
    `projection` also turns on the d x d projection and L2 normalization of the vectors."""
    config = tiny_config(num_layers=3, batch_size=BATCH, warmup_steps=0, dropout=dropout)
    config.objectives.xlco = 1.0
    config.xlco.update(queue_size=QUEUE, momentum=MOMENTUM, temperature=TEMPERATURE, projection=projection,
                       normalize=projection)
    return validate(config)


LAYOUTS = {"one device, no dropout": ((1, 1, 1), "fsdp", 0.0, False),
           "fsdp_tp 2x2x2, dropout, projection": ((2, 2, 2), "fsdp_tp", 0.1, True)}


def xlco_setup(name):
    layout, rules, dropout, projection = LAYOUTS[name]
    return cached_train_setup(xlco_config(dropout, projection), layout, rules)


_TRAJECTORIES = {}


def trajectory_of(name):
    """(setup, batches, history) of four steps from a fresh state: the queue fills over three
    and wraps at the fourth."""
    if name not in _TRAJECTORIES:
        setup = xlco_setup(name)
        batches = step_batches(setup, 4, seed=0)
        _TRAJECTORIES[name] = (setup, batches, run_steps(setup, setup.new_state(), batches)[1])
    return _TRAJECTORIES[name]


@pytest.fixture(params=list(LAYOUTS))
def trajectory(request):
    return trajectory_of(request.param)


def xlco_objective(setup):
    return next(o for o in setup.objectives if o.name == "xlco")


def sentence_vectors(setup, encoder, projection, ids):
    """XLCo's sentence vectors by numpy: the `<s>` state at layer `depth` of `encoder`'s params,
    through the projection and L2-normalized where the config says so."""
    depth = xlco_objective(setup).depth
    mc = setup.config.model.copy_and_resolve_references()
    mc.num_layers = depth
    hidden = mc.hidden_size
    unused_lm_head = {"dense": {"kernel": np.zeros((hidden, hidden)), "bias": np.zeros(hidden)},
                      "LayerNorm": {"scale": np.ones(hidden), "bias": np.zeros(hidden)},
                      "bias": np.zeros(mc.vocab_size)}     # np_forward computes logits too; not read here
    vectors = np_forward({"encoder": encoder, "lm_head": unused_lm_head}, ids, mc)[1][depth][:, 0]
    if setup.config.xlco.projection:
        vectors = vectors @ np.asarray(projection["kernel"], np.float64)
    if setup.config.xlco.normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors


def key_vectors(setup, key_params, ids):
    """The key encoder's vectors, from its params alone (which hold only the bottom layers)."""
    assert jax.tree.leaves(key_params["encoder"]["layers"])[0].shape[0] == xlco_objective(setup).depth
    return sentence_vectors(setup, key_params["encoder"], key_params.get("projection"), ids)


def key_side(setup, params):
    """What the key encoder follows of the model's params: embeddings, bottom layers, projection."""
    depth = xlco_objective(setup).depth
    side = {"encoder": dict(params["encoder"], layers=jax.tree.map(lambda x: x[:depth], params["encoder"]["layers"]))}
    if setup.config.xlco.projection:
        side["projection"] = params["objectives"]["xlco"]
    return side


def test_the_key_encoder_is_the_bottom_layers_of_the_model_at_first(trajectory):
    setup, _, history = trajectory
    before, _, _ = history[0]
    depth = xlco_objective(setup).depth
    assert depth == 2
    key, params = before.extra["xlco"]["key_params"], before.params
    assert set(key) == ({"encoder", "projection"} if setup.config.xlco.projection else {"encoder"})
    assert set(key["encoder"]) == set(params["encoder"]) == {"embeddings", "layers"}
    jax.tree.map(np.testing.assert_array_equal, key["encoder"]["embeddings"], params["encoder"]["embeddings"])
    jax.tree.map(lambda k, p: np.testing.assert_array_equal(k, p[:depth]),
                 key["encoder"]["layers"], params["encoder"]["layers"])
    if setup.config.xlco.projection:
        jax.tree.map(np.testing.assert_array_equal, key["projection"], params["objectives"]["xlco"])


def test_momentum_update_in_the_step_uses_the_updated_query_params(trajectory):
    """After every applied update: key <- m * key + (1 - m) * (embeddings, bottom layers and
    projection of the *new* params); from the second step on the key encoder lags the model, so
    both terms matter."""
    setup, _, history = trajectory
    for before, metrics, after in history:
        assert int(metrics["nonfinite"]) == 0
        old_key, new_key = before.extra["xlco"]["key_params"], after.extra["xlco"]["key_params"]
        expected = jax.tree.map(lambda k, q: MOMENTUM * k.astype(np.float64) + (1 - MOMENTUM) * q, old_key,
                                key_side(setup, after.params))
        for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(new_key)[0], jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    # The update is not a no-op: the key encoder has moved away from its copy of the first params.
    first, last = history[0][0].extra["xlco"]["key_params"], history[-1][2].extra["xlco"]["key_params"]
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), first, last)
    assert max(jax.tree.leaves(moved)) > 1e-4


def test_queue_is_a_fifo_of_each_steps_keys_in_row_order(trajectory):
    """After step t the queue holds x_1, y_1, ..., x_B, y_B of step t at position 2B(t-1) mod Q:
    the keys of the key encoder the step started with; `valid` saturates at Q, and the fourth
    step overwrites the first step's keys (the oldest)."""
    setup, batches, history = trajectory
    written = []
    for t, (batch, (before, _, after)) in enumerate(zip(batches, history)):
        xlco = batch["xlco"]
        keys = np.empty((2 * BATCH, setup.config.model.hidden_size))
        keys[0::2] = key_vectors(setup, before.extra["xlco"]["key_params"], xlco["src_ids"])
        keys[1::2] = key_vectors(setup, before.extra["xlco"]["key_params"], xlco["tgt_ids"])
        start = (2 * BATCH * t) % QUEUE
        written.append((start, keys))
        assert int(after.extra["xlco"]["position"]) == (start + 2 * BATCH) % QUEUE
        assert int(after.extra["xlco"]["valid"]) == min(2 * BATCH * (t + 1), QUEUE)
        queue = after.extra["xlco"]["queue"]
        for slot_start, slot_keys in written[-3:]:         # a queue of 3 steps' keys: the newest 3
            np.testing.assert_allclose(queue[slot_start:slot_start + 2 * BATCH], slot_keys, rtol=2e-4, atol=2e-4)
        if t < 2:                                          # never written: still zero
            np.testing.assert_array_equal(queue[start + 2 * BATCH:], 0.0)
    assert [start for start, _ in written] == [0, 16, 32, 0]
    # The first step's keys are gone; the wrapped step's are there.
    assert np.abs(history[-1][2].extra["xlco"]["queue"][:16] - written[0][1]).max() > 1e-2


def test_xlco_loss_in_the_step_matches_numpy_in_both_directions():
    """Step t's loss: x_i queries y_i's key and y_i queries x_i's, against the queue the step
    started with (empty at step 1: loss 0); queries from the model's layer 2 by numpy (dropout
    off: the query encoder's dropout has no numpy reference)."""
    setup, batches, history = trajectory_of("one device, no dropout")
    for t, (batch, (before, metrics, _)) in enumerate(zip(batches, history)):
        xlco, extra = batch["xlco"], before.extra["xlco"]
        ids = np.concatenate([xlco["src_ids"], xlco["tgt_ids"]])
        queries = sentence_vectors(setup, before.params["encoder"], None, ids)
        keys = key_vectors(setup, extra["key_params"], ids)
        positives = np.concatenate([keys[BATCH:], keys[:BATCH]])
        loss, accuracy = numpy_infonce(queries, positives, extra["queue"], int(extra["valid"]), TEMPERATURE)
        if t == 0:
            assert float(metrics["xlco/loss"]) == 0.0 and loss == 0.0
        assert float(metrics["xlco/loss"]) == pytest.approx(loss, rel=1e-4, abs=1e-5)
        assert float(metrics["xlco/accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    assert float(history[-1][1]["xlco/loss"]) > 0.1


def test_a_restored_checkpoint_continues_exactly_like_the_live_state(tmp_path):
    """Save after two steps (queue partly filled, key encoder lagging), restore into the abstract
    state with the run's shardings: the next step equals the live one bit for bit."""
    setup = xlco_setup("fsdp_tp 2x2x2, dropout, projection")
    first, second, third = step_batches(setup, 3, seed=7)
    state, _ = run_steps(setup, setup.new_state(), [first, second])
    checkpoints = Checkpoints(str(tmp_path), keep=2, async_save=False)
    checkpoints.save(2, state, {"next_step": 2})
    abstract, shardings = state_shardings(setup.model, setup.objectives, setup.optimizer, setup.config,
                                          setup.mesh, setup.rules)
    restored, data_state = checkpoints.restore(abstract_with_shardings(abstract, shardings))
    checkpoints.close()
    assert data_state == {"next_step": 2} and int(restored.step) == 2
    assert int(restored.extra["xlco"]["valid"]) == 32 and int(restored.extra["xlco"]["position"]) == 32
    jax.tree.map(lambda x, s: assert_same_layout(x, s), restored, setup.shardings)
    _, [(live_before, live_metrics, live_after)] = run_steps(setup, state, [third])
    _, [(restored_before, restored_metrics, restored_after)] = run_steps(setup, restored, [third])
    jax.tree.map(np.testing.assert_array_equal, restored_before, live_before)
    jax.tree.map(np.testing.assert_array_equal, restored_metrics, live_metrics)
    assert float(live_metrics["xlco/loss"]) > 0
    jax.tree.map(np.testing.assert_array_equal, restored_after, live_after)


def assert_same_layout(array, sharding):
    assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)
