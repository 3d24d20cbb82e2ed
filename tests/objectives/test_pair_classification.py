"""Translation-pair classification (Unicoder): `<s> x </s></s> y </s>` by hand, and negatives drawn
from other rows that never equal the row's own translation, even when targets repeat.

fairseq ids: <s>=0 <pad>=1 </s>=2.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data.examples import tlm_example
from xlm_jax.objectives.pair_classification import join_pair, pair_examples
from xlm_jax.objectives.registry import build_objectives

BOS, PAD, EOS = 0, 1, 2
TOK = types.SimpleNamespace(bos_id=BOS, pad_id=PAD, eos_id=EOS)


def padded(tokens, length=8):
    return list(tokens) + [PAD] * (length - len(tokens))


def test_join_pair_by_hand():
    x = np.array([padded([BOS, 5, 6, EOS]),
                  padded([BOS, 5, 6, 7, 8, EOS]),              # both long: half of the 4 tokens each
                  [BOS, 4, 5, 6, 7, 8, 9, EOS],                # fills S: a short y keeps all of it
                  padded([BOS, EOS]),                          # an empty sentence
                  padded([BOS, 5, 9])], np.int32)              # a tokenizer whose </s> is 9
    y = np.array([padded([BOS, 7, EOS]),
                  padded([BOS, 9, 10, 11, EOS]),
                  padded([BOS, 7, EOS]),
                  padded([BOS, 4, 5, EOS]),
                  padded([BOS, 7, 9])], np.int32)
    joined, second = join_pair(jnp.asarray(x), jnp.asarray(y), PAD)
    np.testing.assert_array_equal(joined, [
        [BOS, 5, 6, EOS, EOS, 7, EOS, PAD],
        [BOS, 5, 6, EOS, EOS, 9, 10, EOS],
        [BOS, 4, 5, 6, EOS, EOS, 7, EOS],
        [BOS, EOS, EOS, 4, 5, EOS, PAD, PAD],
        [BOS, 5, 9, 9, 7, 9, PAD, PAD],
    ])
    np.testing.assert_array_equal(second, [4, 4, 5, 2, 3])   # where `</s> y </s>` starts
    assert joined.dtype == jnp.int32


def numpy_join(x, y, seq_len):
    """The data pipeline's numpy TLM layout of the two sentences (the same fair truncation)."""
    x, y = x[x != PAD], y[y != PAD]
    return tlm_example(x[1:-1], y[1:-1], seq_len, TOK)["input_ids"]


def pair_batch(rng, targets, seq_len=16):
    """Pairs whose sources are all different; tgt rows as given (rows may repeat). tgt_language is
    the row index, so the language of a joined pair's y says which row's target it took."""
    rows = len(targets)
    sources = [[BOS, *rng.integers(4, 90, 3 + i % 4), EOS] for i in range(rows)]
    return {"src_ids": np.array([padded(s, seq_len) for s in sources], np.int32),
            "tgt_ids": np.array([padded([BOS, *t, EOS], seq_len) for t in targets], np.int32),
            "src_language": np.zeros(rows, np.int32), "tgt_language": np.arange(rows, dtype=np.int32)}


def draws(batch, num_keys, fraction):
    """pair_examples of the batch for keys 0..num_keys-1, as host arrays."""
    make = jax.jit(lambda batch, key: pair_examples(batch, key, fraction, PAD))
    return [jax.tree.map(np.asarray, make(batch, jax.random.key(k))) for k in range(num_keys)]


def test_a_negative_never_equals_the_positive():
    """Rows 0-2 share one translation and rows 4 and 6 another (duplicates are common in real
    corpora): a y taken from such a twin is the row's own translation, so it is labelled 1."""
    rng = np.random.default_rng(0)
    shared, other = [10, 11, 12], [20, 21]
    targets = [shared, shared, shared, [30, 31, 32, 33], other, [40], other, [50, 51, 52]]
    batch = pair_batch(rng, targets)
    rows, seq_len = len(targets), batch["src_ids"].shape[1]
    counts = {"negatives": 0, "own translation": 0, "a twin's translation": 0}
    for example in draws(batch, 300, 0.5):
        taken = example["tgt_language"]                     # the row whose target is y
        shifts = {(j - i) % rows for i, j in enumerate(taken) if j != i}
        assert len(shifts) <= 1 and 0 not in shifts            # one shift of 1..B-1 per step
        np.testing.assert_array_equal(example["src_language"], batch["src_language"])
        for i, j in enumerate(taken):
            y = batch["tgt_ids"][j]
            np.testing.assert_array_equal(example["input_ids"][i], numpy_join(batch["src_ids"][i], y, seq_len))
            same = np.array_equal(y, batch["tgt_ids"][i])
            assert example["label"][i] == int(same), (i, j)   # label 0 <=> y differs token-wise
            counts["negatives" if not same else "own translation" if i == j else "a twin's translation"] += 1
        np.testing.assert_array_equal(example["second_segment"], (batch["src_ids"] != PAD).sum(1))
    assert min(counts.values()) > 50, counts               # every case, many times


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_negative_fraction_is_respected(fraction):
    rng = np.random.default_rng(1)
    batch = pair_batch(rng, [[10 + i, 50 + i] for i in range(8)])   # distinct targets: a swap is a negative
    negatives = np.mean([1 - example["label"] for example in draws(batch, 250, fraction)])
    assert negatives == pytest.approx(fraction, abs=0.05)        # 2,000 rows: 4.5 standard deviations


def test_the_same_key_draws_the_same_pairs_and_another_key_others():
    batch = pair_batch(np.random.default_rng(2), [[10 + i, 50 + i] for i in range(8)])
    first, again, other = (pair_examples(batch, jax.random.key(k), 0.5, PAD) for k in (3, 3, 4))
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first["input_ids"], other["input_ids"])


def test_language_ids_switch_at_the_second_segment():
    """With XLM's language embeddings (model.num_languages > 0): x's language over `<s> x </s>`,
    y's over `</s> y </s>` and the padding after it."""
    config = tiny_config(batch_size=2)
    config.model.num_languages = 3
    config.objectives.pair_classification = 1.0
    (_, objective) = build_objectives(validate(config), ["de", "en", "fr"])
    batch = {"src_ids": np.array([padded([BOS, 5, 6, EOS]), padded([BOS, 7, EOS])], np.int32),
             "tgt_ids": np.array([padded([BOS, 8, EOS]), padded([BOS, 9, 9, EOS])], np.int32),
             "src_language": np.array([0, 2], np.int32), "tgt_language": np.array([1, 0], np.int32)}
    objective.options.negative_fraction = 1e-9          # keep the pairs: the check is on the layout
    joined = jax.tree.map(np.asarray, objective.prepare_batch(batch, jax.random.key(0)))
    np.testing.assert_array_equal(joined["label"], [1, 1])
    np.testing.assert_array_equal(joined["language_ids"][:, :8], [[0, 0, 0, 0, 1, 1, 1, 1],
                                                                  [2, 2, 2, 0, 0, 0, 0, 0]])
