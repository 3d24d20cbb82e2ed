"""MLM masking checked statistically over many sequences: rates, 80/10/10, specials, determinism."""
import numpy as np
import pytest
import tensorflow as tf

from xlm_jax.data.masking import mask_example, max_predictions

VOCAB, MASK = 1000, 999
SPECIALS = (0, 1, 2, 3, MASK)
SEQ_LEN = 128
SETTINGS = dict(vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIALS, mask_prob=0.15, mask_token_prob=0.8,
                random_token_prob=0.1, num_predictions=max_predictions(SEQ_LEN, 0.15))


def _blocks(count, seed=0):
    """<s>, ordinary tokens (with </s> and <unk> sprinkled in), then a random-length <pad> tail."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(4, VOCAB - 1, size=(count, SEQ_LEN)).astype(np.int32)
    blocks[rng.random(blocks.shape) < 0.05] = 2
    blocks[rng.random(blocks.shape) < 0.01] = 3
    blocks[:, 0] = 0
    for row, pad_from in zip(blocks, rng.integers(SEQ_LEN // 2, SEQ_LEN + 1, size=count)):
        row[pad_from:] = 1
    return blocks


def _mask_all(blocks, seed=7):
    key = tf.constant([seed, 0], tf.int64)
    table = tf.constant(blocks)
    dataset = tf.data.Dataset.range(len(blocks)).map(
        lambda i: mask_example(table[i], tf.random.experimental.stateless_fold_in(key, i), **SETTINGS),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = list(dataset.batch(len(blocks)).as_numpy_iterator())
    return batches[0]


@pytest.fixture(scope="module")
def masked():
    blocks = _blocks(3000)
    return blocks, _mask_all(blocks)


def test_max_predictions():
    assert max_predictions(128, 0.15) == 20
    assert max_predictions(512, 0.15) == 77
    assert max_predictions(4, 0.1) == 1


def test_output_shapes_and_dtypes(masked):
    _, out = masked
    assert out["input_ids"].shape == (3000, SEQ_LEN) and out["input_ids"].dtype == np.int32
    for key, dtype in (("masked_positions", np.int32), ("masked_ids", np.int32), ("masked_weights", np.float32)):
        assert out[key].shape == (3000, 20) and out[key].dtype == dtype


def test_fifteen_percent_of_maskable_tokens_are_chosen(masked):
    blocks, out = masked
    maskable = ~np.isin(blocks, SPECIALS)
    chosen = out["masked_weights"].sum()
    # Randomized rounding makes the expectation exactly 15%; its spread is < 0.5 token per sequence.
    assert chosen / maskable.sum() == pytest.approx(0.15, abs=0.002)
    per_sequence = out["masked_weights"].sum(1)
    assert np.all(np.abs(per_sequence - 0.15 * maskable.sum(1)) < 1)


def test_slots_are_sorted_unique_and_padded(masked):
    blocks, out = masked
    for row, positions, ids, weights in zip(blocks, out["masked_positions"], out["masked_ids"],
                                            out["masked_weights"]):
        n = int(weights.sum())
        assert np.all(weights[:n] == 1) and np.all(weights[n:] == 0)
        assert np.all(np.diff(positions[:n]) > 0)
        assert np.all(positions[n:] == 0) and np.all(ids[n:] == 0)
        np.testing.assert_array_equal(ids[:n], row[positions[:n]])


def test_specials_are_never_chosen_nor_changed(masked):
    blocks, out = masked
    real = out["masked_weights"] > 0
    assert not np.isin(out["masked_ids"][real], SPECIALS).any()
    special = np.isin(blocks, SPECIALS)
    np.testing.assert_array_equal(out["input_ids"][special], blocks[special])


def test_only_chosen_positions_change(masked):
    blocks, out = masked
    chosen = np.zeros(blocks.shape, bool)
    rows = np.repeat(np.arange(len(blocks)), out["masked_positions"].shape[1])
    chosen[rows, out["masked_positions"].ravel()] = out["masked_weights"].ravel() > 0
    np.testing.assert_array_equal(out["input_ids"][~chosen], blocks[~chosen])


def test_eighty_ten_ten(masked):
    blocks, out = masked
    real = out["masked_weights"] > 0
    rows = np.nonzero(real)[0]
    corrupted = out["input_ids"][rows, out["masked_positions"][real]]
    original = out["masked_ids"][real]
    n = len(original)
    mask_rate = np.mean(corrupted == MASK)
    kept_rate = np.mean(corrupted == original)
    random = corrupted[(corrupted != MASK) & (corrupted != original)]
    tolerance = 5 * np.sqrt(0.8 * 0.2 / n)
    assert mask_rate == pytest.approx(0.8, abs=tolerance)
    # A random token equals the original with probability 1 / (number of ordinary ids).
    assert kept_rate == pytest.approx(0.1 + 0.1 / (VOCAB - 5), abs=tolerance)
    assert len(random) / n == pytest.approx(0.1 * (1 - 1 / (VOCAB - 5)), abs=tolerance)
    assert random.min() >= 4 and random.max() <= VOCAB - 2


def test_positions_are_uniform_over_maskable_ones(masked):
    blocks, out = masked
    maskable = ~np.isin(blocks, SPECIALS)
    hits = np.zeros(SEQ_LEN)
    np.add.at(hits, out["masked_positions"][out["masked_weights"] > 0], 1)
    rate = hits[1:SEQ_LEN // 2] / maskable[:, 1:SEQ_LEN // 2].sum(0)   # positions every sequence has
    assert rate == pytest.approx(np.full_like(rate, 0.15), abs=0.035)


def test_same_seed_same_mask_other_seed_other_mask():
    blocks = _blocks(50, seed=3)
    first, again, other = _mask_all(blocks, seed=7), _mask_all(blocks, seed=7), _mask_all(blocks, seed=8)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["masked_positions"], other["masked_positions"])


def test_nothing_maskable_nothing_predicted():
    tokens = tf.constant([0] + [1] * (SEQ_LEN - 1), tf.int32)
    out = mask_example(tokens, tf.constant([1, 2], tf.int64), **SETTINGS)
    assert out["masked_weights"].numpy().sum() == 0
    np.testing.assert_array_equal(out["input_ids"].numpy(), tokens.numpy())
