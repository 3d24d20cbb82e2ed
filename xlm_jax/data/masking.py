"""BERT/XLM-R masking (15% chosen; 80% <mask>, 10% random token, 10% kept), stateless per example.

Written in TensorFlow so it runs inside tf.data, keyed by a seed derived from (train seed,
global example index): the same example gets the same mask on any host, after any resume.
Positions holding a special token (<s>, <pad>, </s>, <unk>, <mask>: whatever `special_ids`
lists) are never chosen; predicting them teaches nothing. <unk> is left out too, unlike
fairseq, because its target carries no information about the text.
"""
import math

import tensorflow as tf


def max_predictions(seq_len: int, mask_prob: float) -> int:
    """Static number of prediction slots per sequence, enough for every choice mask_example makes."""
    return max(1, math.ceil(seq_len * mask_prob))


def mask_example(tokens: tf.Tensor, seed: tf.Tensor, *, vocab_size: int, mask_id: int, special_ids,
                 mask_prob: float, mask_token_prob: float, random_token_prob: float,
                 num_predictions: int) -> dict:
    """Corrupts one block [S] and lists its prediction targets in num_predictions padded slots.

    n = min(num_predictions, floor(mask_prob * maskable + u)), u ~ U[0, 1) (fairseq's randomized
    rounding, so the expected rate is exactly mask_prob); the n positions are uniform among
    the maskable ones. Random replacements are uniform over the ordinary ids 4 .. vocab_size - 2.
    """
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    length = tf.shape(tokens)[0]
    count_seed, choice_seed, action_seed, random_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4))

    maskable = tf.reduce_all(tokens[:, None] != tf.constant(list(special_ids), tf.int32)[None, :], axis=1)
    num_maskable = tf.reduce_sum(tf.cast(maskable, tf.float32))
    u = tf.random.stateless_uniform([], count_seed)
    n = tf.minimum(tf.cast(tf.floor(mask_prob * num_maskable + u), tf.int32), num_predictions)

    scores = tf.where(maskable, tf.random.stateless_uniform([length], choice_seed), -1.0)
    _, ranked = tf.math.top_k(scores, k=num_predictions)           # maskable positions first, in random order
    real = tf.range(num_predictions) < n                           # the first n slots; sorting keeps them first
    positions = tf.sort(tf.where(real, ranked, length))            # chosen ascending, then padding (= length)
    positions = tf.where(real, positions, 0)
    chosen = tf.scatter_nd(positions[:, None], tf.cast(real, tf.int32), [length]) > 0

    action = tf.random.stateless_uniform([length], action_seed)
    random_tokens = tf.random.stateless_uniform([length], random_seed, minval=4, maxval=vocab_size - 1,
                                                dtype=tf.int32)
    corrupted = tf.where(action < mask_token_prob, mask_id,
                         tf.where(action < mask_token_prob + random_token_prob, random_tokens, tokens))
    return {
        "input_ids": tf.where(chosen, corrupted, tokens),
        "masked_positions": positions,
        "masked_ids": tf.where(real, tf.gather(tokens, positions), 0),
        "masked_weights": tf.cast(real, tf.float32),
    }
