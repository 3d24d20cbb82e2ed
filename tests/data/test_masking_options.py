"""Whole-word and frequency-weighted masking, and masking TLM pairs: checked against the definitions
on a real SentencePiece model (whole words) and on synthetic counts (weights)."""
import types

import numpy as np
import pytest
import tensorflow as tf

from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data import pipeline
from xlm_jax.data.examples import pack_stream, tlm_example
from xlm_jax.data.masking import (mask_example, max_predictions, sample_weights, token_counts,
                                  word_start_table)
from xlm_jax.errors import ConfigError

SEQ_LEN = 128


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    from xlm_jax.data.tokenizers import train_sentencepiece
    text = {lang: (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:500]
            for lang in ("en", "sw")}
    return train_sentencepiece(text, {"en": 0.5, "sw": 0.5}, 1000, input_sentence_size=1000,
                               character_coverage=1.0, byte_fallback=False, seed=0)


@pytest.fixture(scope="module")
def blocks(shared_data, tokenizer):
    lines = []
    for lang in ("en", "sw"):
        lines += (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[500:3500]
    return pack_stream(tokenizer.encode(lines), SEQ_LEN, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)


def _settings(tok, **options):
    return dict(vocab_size=tok.vocab_size, mask_id=tok.mask_id, special_ids=tok.special_ids, mask_prob=0.15,
                mask_token_prob=0.8, random_token_prob=0.1, **options)


def _mask_all(blocks, settings, seed=7, indices=None):
    """mask_example of blocks[i] keyed by (seed, i), for i in indices (default all), as one batch."""
    key = tf.constant([seed, 0], tf.int64)
    table = tf.constant(blocks)
    indices = np.arange(len(blocks)) if indices is None else np.asarray(indices)
    dataset = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64)).map(
        lambda i: mask_example(table[i], tf.random.experimental.stateless_fold_in(key, i), **settings),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return next(dataset.batch(len(indices)).as_numpy_iterator())


def _chosen(out, shape):
    chosen = np.zeros(shape, bool)
    rows = np.repeat(np.arange(shape[0]), out["masked_positions"].shape[1])
    chosen[rows, out["masked_positions"].ravel()] = out["masked_weights"].ravel() > 0
    return chosen


def _words(row, maskable, word_start):
    """numpy reference: word id per position (-1 for specials); a word starts at a '▁' piece or after a special."""
    ids, current, previous = np.full(len(row), -1), -1, False
    for i, token in enumerate(row):
        if maskable[i]:
            if word_start[token] or not previous:
                current += 1
            ids[i] = current
        previous = maskable[i]
    return ids


def test_word_start_table(tokenizer):
    table = word_start_table(tokenizer)
    assert table.shape == (tokenizer.vocab_size,) and table.dtype == bool
    for i in range(tokenizer.vocab_size):
        assert table[i] == (tokenizer.id_to_piece(i).startswith("\u2581") and i not in tokenizer.special_ids)


@pytest.fixture(scope="module")
def whole_word(tokenizer, blocks):
    table = word_start_table(tokenizer)
    slots = max_predictions(SEQ_LEN, 0.15, whole_word=True)
    return table, slots, _mask_all(blocks, _settings(tokenizer, num_predictions=slots, word_start=table))


def test_whole_word_masking_chooses_whole_words(tokenizer, blocks, whole_word):
    table, slots, out = whole_word
    assert out["masked_positions"].shape == (len(blocks), slots)
    chosen = _chosen(out, blocks.shape)
    maskable = ~np.isin(blocks, tokenizer.special_ids)
    assert not (chosen & ~maskable).any()
    partial = 0
    for row, row_chosen, row_maskable in zip(blocks, chosen, maskable):
        words = _words(row, row_maskable, table)
        for w in np.unique(words[row_chosen]):
            partial += not row_chosen[words == w].all()
    assert partial == 0
    # Words are really multi-token here, so the test means something.
    assert np.mean(~table[blocks[chosen]]) > 0.3


def test_whole_word_rate_and_slots(tokenizer, blocks, whole_word):
    table, slots, out = whole_word
    maskable = ~np.isin(blocks, tokenizer.special_ids)
    chosen = _chosen(out, blocks.shape)
    assert chosen.sum() / maskable.sum() == pytest.approx(0.15, abs=0.006)
    # Slots sorted, unique, padded; masked_ids are the originals.
    for row, positions, ids, weights in zip(blocks, out["masked_positions"], out["masked_ids"],
                                            out["masked_weights"]):
        n = int(weights.sum())
        assert np.all(np.diff(positions[:n]) > 0) and np.all(positions[n:] == 0) and np.all(ids[n:] == 0)
        np.testing.assert_array_equal(ids[:n], row[positions[:n]])
    # Words are dropped for lack of slots only rarely: nearly every sequence gets its floor(15% of words).
    short = 0
    for row, row_chosen, row_maskable in zip(blocks, chosen, maskable):
        words = _words(row, row_maskable, table)
        short += len(np.unique(words[row_chosen])) < np.floor(0.15 * (words.max() + 1))
    assert short / len(blocks) < 0.01


def test_whole_word_eighty_ten_ten_per_word(tokenizer, blocks, whole_word):
    table, _, out = whole_word
    chosen = _chosen(out, blocks.shape)
    maskable = ~np.isin(blocks, tokenizer.special_ids)
    kinds = []
    for row, new, row_chosen, row_maskable in zip(blocks, out["input_ids"], chosen, maskable):
        words = _words(row, row_maskable, table)
        for w in np.unique(words[row_chosen]):
            at = words == w
            is_mask = new[at] == tokenizer.mask_id
            assert is_mask.all() or not is_mask.any()        # one decision per word
            kinds.append("mask" if is_mask.all() else "kept" if np.array_equal(new[at], row[at]) else "random")
    kinds = np.array(kinds)
    tolerance = 5 * np.sqrt(0.8 * 0.2 / len(kinds))
    assert np.mean(kinds == "mask") == pytest.approx(0.8, abs=tolerance)
    assert np.mean(kinds == "kept") == pytest.approx(0.1, abs=tolerance)
    unchanged = ~chosen
    np.testing.assert_array_equal(out["input_ids"][unchanged], blocks[unchanged])


def test_words_start_after_specials_and_end_at_them(tokenizer):
    """A piece without '▁' right after <s> or </s> starts a word; no word runs across </s>."""
    table = word_start_table(tokenizer)
    inner = [i for i in range(5, tokenizer.vocab_size - 1) if not table[i]][:6]
    tokens = np.array([0, inner[0], inner[1], 2, inner[2], inner[3], 2, 1], np.int32)   # <s> a b </s> c d </s> <pad>
    settings = _settings(tokenizer, num_predictions=8, word_start=table)
    settings["mask_prob"] = 0.5         # 2 words: exactly 1 chosen
    for seed in range(20):
        out = mask_example(tokens, tf.constant([seed, 1], tf.int64), **settings)
        positions = out["masked_positions"].numpy()[out["masked_weights"].numpy() > 0].tolist()
        assert positions in ([1, 2], [4, 5])


def _frequency_blocks(count=3000):
    """64 ordinary tokens a block: 48 of the frequent id 10, 16 of the rare id 11, shuffled."""
    rng = np.random.default_rng(0)
    body = np.array([10] * 48 + [11] * 16, np.int32)
    blocks = np.stack([np.concatenate([[0], rng.permutation(body), [2]]) for _ in range(count)]).astype(np.int32)
    return blocks


def test_frequency_weights_follow_xlm_sample_alpha():
    counts = np.array([5, 0, 7, 0, 100, 1, 0, 0, 0, 0, 10_000, 100], np.int64)
    weights = sample_weights(counts, 0.5, special_ids=(0, 1, 2, 3))
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights[4:], [0.1, 1, 1, 1, 1, 1, 0.01, 0.1], rtol=1e-6)
    assert np.all(weights[:4] == 0)
    np.testing.assert_array_equal(token_counts([np.array([[4, 4], [5, 1]])], 8), [0, 1, 0, 0, 2, 1, 0, 0])


def test_rare_tokens_are_chosen_more_often_by_the_expected_ratio():
    blocks = _frequency_blocks()
    counts = np.zeros(16, np.int64)
    counts[10], counts[11] = 10_000, 100              # weights 0.01 and 0.1 at alpha 0.5
    weights = sample_weights(counts, 0.5, special_ids=(0, 1, 2, 3, 15))
    settings = dict(vocab_size=16, mask_id=15, special_ids=(0, 1, 2, 3, 15), mask_prob=0.15, mask_token_prob=0.8,
                    random_token_prob=0.1, num_predictions=max_predictions(66, 0.15), token_weights=weights)
    out = _mask_all(blocks, settings)
    real = out["masked_weights"] > 0
    assert real.sum() / (64 * len(blocks)) == pytest.approx(0.15, abs=0.002)    # the rate is unchanged
    rare_share = np.mean(out["masked_ids"][real] == 11)
    # The law of XLM's np.random.choice(p=w/sum(w), replace=False) with the same number of draws.
    rng = np.random.default_rng(1)
    p = np.where(blocks[0, 1:-1] == 11, 0.1, 0.01)
    expected = np.mean([np.mean(blocks[0, 1:-1][rng.choice(64, size=n, replace=False, p=p / p.sum())] == 11)
                        for n in rng.choice([9, 10], size=20_000, p=[0.4, 0.6])])
    assert expected > 0.6                                # vs 0.25 for a uniform choice
    assert rare_share == pytest.approx(expected, abs=0.015)
    # Per token: a rare token is chosen about (expected / 16) / ((1 - expected) / 48) times as often.
    rare_rate = (out["masked_ids"][real] == 11).sum() / (16 * len(blocks))
    frequent_rate = (out["masked_ids"][real] == 10).sum() / (48 * len(blocks))
    assert rare_rate / frequent_rate == pytest.approx(3 * expected / (1 - expected), rel=0.1)


def test_zero_weight_tokens_are_never_chosen():
    blocks = _frequency_blocks(200)
    weights = np.ones(16, np.float32)
    weights[[0, 1, 2, 3, 15, 11]] = 0
    settings = dict(vocab_size=16, mask_id=15, special_ids=(0, 1, 2, 3, 15), mask_prob=0.15, mask_token_prob=0.8,
                    random_token_prob=0.1, num_predictions=20, token_weights=weights)
    out = _mask_all(blocks, settings)
    real = out["masked_weights"] > 0
    assert np.all(out["masked_ids"][real] == 10)
    assert real.sum() / (48 * len(blocks)) == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize("option", ["plain", "whole_word", "weights"])
def test_mask_depends_only_on_seed_and_example_index(tokenizer, blocks, option):
    options = {"plain": {}, "whole_word": {"word_start": word_start_table(tokenizer)},
               "weights": {"token_weights": sample_weights(token_counts(blocks, tokenizer.vocab_size), 0.5,
                                                           tokenizer.special_ids)}}[option]
    settings = _settings(tokenizer, num_predictions=max_predictions(SEQ_LEN, 0.15, "word_start" in options),
                         **options)
    subset = blocks[:40]
    first = _mask_all(subset, settings)
    # Another batch composition and order: examples 30..39 first, then 0..9.
    mixed = _mask_all(subset, settings, indices=list(range(30, 40)) + list(range(10)))
    other_seed = _mask_all(subset, settings, seed=8)
    for key in first:
        np.testing.assert_array_equal(mixed[key][:10], first[key][30:40], err_msg=key)
        np.testing.assert_array_equal(mixed[key][10:], first[key][:10], err_msg=key)
    assert not np.array_equal(first["masked_positions"], other_seed["masked_positions"])


def test_options_cannot_be_combined(tokenizer):
    with pytest.raises(ValueError, match="cannot be combined"):
        mask_example(np.zeros(8, np.int32), tf.constant([0, 0], tf.int64),
                     **_settings(tokenizer, num_predictions=2, word_start=np.zeros(1000, bool),
                                 token_weights=np.ones(1000, np.float32)))


def test_tlm_pairs_are_masked_on_both_sides(tokenizer, shared_data):
    pairs = [line.split("\t") for line in (shared_data / "parallel" / "tatoeba_challenge" / "en-de.tsv")
             .read_text(encoding="utf-8").splitlines()[:300]]
    src, tgt = tokenizer.encode([p[0] for p in pairs]), tokenizer.encode([p[1] for p in pairs])
    examples = np.stack([tlm_example(s, t, 96, tokenizer)["input_ids"] for s, t in zip(src, tgt)])
    out = _mask_all(examples, _settings(tokenizer, num_predictions=max_predictions(96, 0.15)))
    chosen = _chosen(out, examples.shape)
    second = np.cumsum(examples == tokenizer.eos_id, axis=1) >= 1     # from the first </s> on: the target side
    maskable = ~np.isin(examples, tokenizer.special_ids)
    for side in (~second, second):
        assert chosen[side].sum() / maskable[side].sum() == pytest.approx(0.15, abs=0.02)
    assert not (chosen & ~maskable).any()


def test_config_fields_and_pipeline_masker(tokenizer, blocks):
    c = default_config()
    assert c.data.whole_word_mask is False and c.data.mask_sample_alpha == 0.0
    bad = default_config()
    bad.data.mask_sample_alpha = -0.5
    with pytest.raises(ConfigError, match=">= 0"):
        validate(bad)
    both = default_config()
    both.data.whole_word_mask, both.data.mask_sample_alpha = True, 0.5
    with pytest.raises(ConfigError, match="cannot be combined"):
        validate(both)

    data = types.SimpleNamespace(tokenizer=tokenizer, token_counts=token_counts(blocks[:200], tokenizer.vocab_size))
    c.data.seq_len = SEQ_LEN
    plain = pipeline._masker(data, c)(blocks[0], tf.constant([1, 2], tf.int64))
    c.data.whole_word_mask = True
    words = pipeline._masker(data, c)(blocks[0], tf.constant([1, 2], tf.int64))
    assert words["masked_positions"].shape[0] == max_predictions(SEQ_LEN, 0.15, whole_word=True)
    c.data.whole_word_mask, c.data.mask_sample_alpha = False, 0.5
    weighted = pipeline._masker(data, c)(blocks[0], tf.constant([1, 2], tf.int64))
    assert plain["masked_positions"].shape == weighted["masked_positions"].shape == (max_predictions(SEQ_LEN, 0.15),)
    assert not np.array_equal(plain["masked_positions"].numpy(), weighted["masked_positions"].numpy())
