"""BERT/XLM-R masking (15% chosen; 80% <mask>, 10% random token, 10% kept), stateless per example.

Written in TensorFlow so it runs inside tf.data, keyed by a seed derived from (train seed,
global example index): the same example gets the same mask on any host, after any resume,
whatever else is in its batch. Positions holding a special token (<s>, <pad>, </s>, <unk>,
<mask>: whatever `special_ids` lists) are never chosen; predicting them teaches nothing. <unk>
is left out too, unlike fairseq, because its target carries no information about the text.
The function looks only at token ids, so a TLM pair (xlm_jax.data.examples.tlm_example) is
masked over both its sides by the same call.

Two options change which positions are chosen (at most one at a time):
- whole-word masking (`word_start`, fairseq `--mask-whole-words`): whole words are chosen;
- frequency-smoothed choice (`token_weights`, XLM `--sample_alpha`): position i is drawn with
  weight count(token_i)^-alpha, so rare tokens are predicted more often.
"""

import numpy as np
import tensorflow as tf

from xlm_jax.data.streams import max_predictions   # noqa: F401 (defined TF-free, beside the batch shapes)



def word_start_table(tokenizer) -> np.ndarray:
    """bool [vocab_size]: does this id begin a word? For mask_example's `word_start`.

    SentencePiece: pieces starting with '▁' (a space before them in the text). Bytes: the space
    byte, so a word is ' ' plus what follows, like '▁' in SentencePiece. WordPiece: every piece
    but the '##' continuations. Specials are False (they are never masked and always end a word).
    Language id ranges: as their base, in every range.
    """
    from xlm_jax.data.tokenizers import ByteTokenizer   # local: tokenizers is heavier than this module
    if tokenizer.languages:   # language id ranges: each range's words start where its base's do
        return word_start_table(tokenizer.base)[tokenizer.base_ids(np.arange(tokenizer.vocab_size))]
    specials = set(tokenizer.special_ids)
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    if type(tokenizer).__name__ == "WordPieceTokenizer":
        starts = [not p.startswith("##") for p in pieces]
    elif isinstance(tokenizer, ByteTokenizer):
        starts = [p == "<0x20>" for p in pieces]
    else:
        starts = [p.startswith("\u2581") for p in pieces]
    return np.array([s and i not in specials for i, s in enumerate(starts)], dtype=bool)


def token_counts(blocks, vocab_size: int) -> np.ndarray:
    """int64 [vocab_size]: how often each id occurs in the blocks (an array or a list of arrays)."""
    counts = np.zeros(vocab_size, np.int64)
    for b in (blocks if isinstance(blocks, (list, tuple)) else [blocks]):
        counts += np.bincount(np.asarray(b).ravel(), minlength=vocab_size)[:vocab_size]
    return counts


def sample_weights(counts: np.ndarray, alpha: float, special_ids=()) -> np.ndarray:
    """float32 [vocab]: XLM's mask_scores = max(count, 1)^-alpha, 0 for the specials (never chosen).

    alpha = 0 gives uniform weights (plain masking); XLM's --sample_alpha, e.g. 0.5 (its
    README suggests 0 or 0.5 for MLM).
    """
    weights = np.maximum(np.asarray(counts, np.float64), 1.0) ** -alpha
    weights[list(special_ids)] = 0.0
    return weights.astype(np.float32)


def mask_example(tokens: tf.Tensor, seed: tf.Tensor, *, vocab_size: int, mask_id: int, special_ids,
                 mask_prob: float, mask_token_prob: float, random_token_prob: float,
                 num_predictions: int, word_start: np.ndarray | None = None,
                 token_weights: np.ndarray | None = None, language_range_size: int = 0,
                 random_ids: tuple[int, int] | None = None, mask_ids: np.ndarray | None = None) -> dict:
    """Corrupts one block [S] and lists its prediction targets in num_predictions padded slots.

    Default: n = min(num_predictions, floor(mask_prob * maskable + u)), u ~ U[0, 1) (fairseq's
    randomized rounding, so the expected rate is exactly mask_prob); the n positions are uniform
    among the maskable ones; each chosen token is independently <mask> / random / kept.

    word_start (bool [vocab], word_start_table): whole-word masking as fairseq's
    --mask-whole-words. A word is a maskable token that starts a word (or follows a special)
    plus the maskable non-starting tokens after it. floor(mask_prob * words + u) words are
    chosen uniformly, so the expected number of masked tokens is exactly mask_prob * maskable
    (words that would overflow num_predictions stay unmasked; see max_predictions). 80/10/10 is drawn per word, as
    fairseq: a chosen word is all <mask>, all random tokens or all kept.

    token_weights (float [vocab], sample_weights): the n positions (n as by default) are drawn
    without replacement with probability proportional to token_weights[token] (Gumbel top-k;
    the same law as XLM's np.random.choice(p=..., replace=False)); weight-0 ids are never chosen.

    Random replacements are uniform over the ordinary ids 4 .. vocab_size - 2, or over
    [random_ids[0], random_ids[1]) when given (language ranges whose own specials follow <mask>);
    with language_range_size P > 0 (data.language_id_ranges: language i owns ids
    4 + i*P .. 4 + (i+1)*P - 1), over the range of the token replaced, so no other language's id
    leaks in (a TLM pair's sides each keep their own).

    mask_ids (int [vocab], data.shared_specials=False): the <mask> of each id's language, so a
    token is masked by its own language's <mask>; None: mask_id for every token.
    """
    if word_start is not None and token_weights is not None:
        raise ValueError("whole-word masking and frequency-weighted choice cannot be combined; pick one")
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    length = tf.shape(tokens)[0]
    count_seed, choice_seed, action_seed, random_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4))

    maskable = tf.reduce_all(tokens[:, None] != tf.constant(list(special_ids), tf.int32)[None, :], axis=1)
    if token_weights is not None:
        weights = tf.gather(tf.constant(np.asarray(token_weights, np.float32)), tokens)
        maskable &= weights > 0
    u = tf.random.stateless_uniform([], count_seed)

    if word_start is not None:
        chosen, action = _whole_words(tokens, maskable, tf.constant(np.asarray(word_start, bool)), u,
                                      choice_seed, action_seed, mask_prob, num_predictions)
        scores = tf.where(chosen, tf.cast(length - tf.range(length), tf.float32), -1.0)
        top, positions = tf.math.top_k(scores, k=num_predictions)   # chosen positions, ascending
        real = top > 0
        positions = tf.where(real, positions, 0)
    else:
        num_maskable = tf.reduce_sum(tf.cast(maskable, tf.float32))
        n = tf.minimum(tf.cast(tf.floor(mask_prob * num_maskable + u), tf.int32), num_predictions)
        uniform = tf.random.stateless_uniform([length], choice_seed)
        if token_weights is None:
            scores = tf.where(maskable, uniform, -1.0)
        else:   # Gumbel top-k: log w + Gumbel noise; the top n are a weighted draw without replacement
            gumbel = -tf.math.log(-tf.math.log(tf.maximum(uniform, 1e-20)))
            scores = tf.where(maskable, tf.math.log(tf.where(maskable, weights, 1.0)) + gumbel, -np.inf)
        _, ranked = tf.math.top_k(scores, k=num_predictions)       # maskable positions first, in random order
        real = tf.range(num_predictions) < n                       # the first n slots; sorting keeps them first
        positions = tf.sort(tf.where(real, ranked, length))        # chosen ascending, then padding (= length)
        positions = tf.where(real, positions, 0)
        chosen = tf.scatter_nd(positions[:, None], tf.cast(real, tf.int32), [length]) > 0
        action = tf.random.stateless_uniform([length], action_seed)

    if language_range_size:
        range_start = 4 + (tokens - 4) // language_range_size * language_range_size
        random_tokens = range_start + tf.random.stateless_uniform([length], random_seed, minval=0,
                                                                  maxval=language_range_size, dtype=tf.int32)
    else:
        first, end = random_ids or (4, vocab_size - 1)
        random_tokens = tf.random.stateless_uniform([length], random_seed, minval=first, maxval=end, dtype=tf.int32)
    if mask_ids is not None:
        mask_id = tf.gather(tf.constant(np.asarray(mask_ids, np.int32)), tokens)
    corrupted = tf.where(action < mask_token_prob, mask_id,
                         tf.where(action < mask_token_prob + random_token_prob, random_tokens, tokens))
    return {
        "input_ids": tf.where(chosen, corrupted, tokens),
        "masked_positions": positions,
        "masked_ids": tf.where(real, tf.gather(tokens, positions), 0),
        "masked_weights": tf.cast(real, tf.float32),
    }


def _whole_words(tokens, maskable, word_start, u, choice_seed, action_seed, mask_prob, num_predictions):
    """(chosen [S] bool, action [S] in [0, 1) shared by the tokens of a word) for mask_example."""
    length = tf.shape(tokens)[0]
    after_special = tf.concat([[True], ~maskable[:-1]], axis=0)
    begins = maskable & (tf.gather(word_start, tokens) | after_special)
    word = tf.where(maskable, tf.cumsum(tf.cast(begins, tf.int32)) - 1, length)   # word id; length = none
    num_words = tf.reduce_sum(tf.cast(begins, tf.int32))
    word_len = tf.math.unsorted_segment_sum(tf.ones_like(word), word, length + 1)[:length]
    n_words = tf.cast(tf.floor(mask_prob * tf.cast(num_words, tf.float32) + u), tf.int32)
    exists = tf.range(length) < num_words
    order = tf.argsort(tf.where(exists, tf.random.stateless_uniform([length], choice_seed), -1.0),
                       direction="DESCENDING", stable=True)                         # words in random order
    take = (tf.range(length) < n_words) & (tf.cumsum(tf.gather(word_len, order)) <= num_predictions)
    chosen_word = tf.scatter_nd(order[:, None], tf.cast(take, tf.int32), [length]) > 0
    chosen_word = tf.concat([chosen_word, [False]], axis=0)
    word_action = tf.concat([tf.random.stateless_uniform([length], action_seed), [1.0]], axis=0)
    return tf.gather(chosen_word, word), tf.gather(word_action, word)
