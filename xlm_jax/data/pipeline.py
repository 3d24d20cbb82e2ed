"""Corpus -> tokenizer -> packed blocks once per run, then stateless, resumable MLM batches.

Example g of the run (g = step * global_batch + j) is a pure function of (train.seed, g):
its language, block and mask come from stateless TF random ops keyed on g. So a resumed
run sees exactly the batches it would have seen, and any number of processes can each
build their slice of the same global batch without talking to each other.
"""
import dataclasses
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from xlm_jax.data.examples import pack_stream
from xlm_jax.data.masking import mask_example, max_predictions, sample_weights, token_counts, word_start_table
from xlm_jax.data.sampling import language_probs, sampling_table
from xlm_jax.data.sources import load_corpus
from xlm_jax.data.tokenizers import (ByteTokenizer, Tokenizer, load_tokenizer, save_tokenizer, tokenizer_kind,
                                     tokenizer_path, train_sentencepiece)
from xlm_jax.errors import ConfigError

_SAMPLE_STREAM, _MASK_STREAM, _EVAL_STREAM = 0, 1, 2
_EVAL_SEED = 20_200_101      # fixed, not train.seed: runs with different seeds see the same eval batches
_EVAL_DIVISOR = 10           # hold out at most a tenth of a language


@dataclasses.dataclass
class PretrainData:
    languages: list[str]                 # sorted
    probs: list[float]                   # q_i aligned with languages
    train_blocks: list[np.ndarray]       # per language [N_i, seq_len] int32
    eval_blocks: list[np.ndarray]        # per language; [0, seq_len] when too small to hold out text
    tokenizer: Tokenizer
    counts: dict[str, int]               # n_i of q_i: training sentences or tokens (data.sampling_unit)


def prepare_data(config, workdir: str | None, log: Callable[[str], None] = print) -> PretrainData:
    """Reads the corpus, splits off eval text, gets the tokenizer (reused from workdir) and packs blocks."""
    d = config.data
    corpus = load_corpus(d)
    log(f"corpus: {corpus.origin}")
    languages = sorted(lang for lang, sentences in corpus.mono.items() if sentences)
    train_text, eval_text = {}, {}
    for lang in languages:
        train_text[lang], eval_text[lang] = split_held_out(corpus.mono[lang], d)
    counts = {lang: len(train_text[lang]) for lang in languages}
    probs = language_probs(counts, d.alpha, d.language_caps, d.language_floors)
    # Token counts need the tokenizer: one trained for a "tokens" run samples its training
    # sentences by these sentence-count q_i.
    tokenizer = _tokenizer(config, workdir, train_text, probs, log)

    def blocks(sentences):
        return pack_stream(tokenizer.encode(sentences), d.seq_len, tokenizer.bos_id, tokenizer.eos_id,
                           tokenizer.pad_id)

    train_blocks = [blocks(train_text[lang]) for lang in languages]
    eval_blocks = [blocks(eval_text[lang]) for lang in languages]
    if d.sampling_unit == "tokens":  # every token of the packed text but padding, <s> and </s> included
        counts = {lang: int(np.count_nonzero(b != tokenizer.pad_id)) for lang, b in zip(languages, train_blocks)}
        probs = language_probs(counts, d.alpha, d.language_caps, d.language_floors)
    bounds = "".join(f", {name} {value}" for name, value in (("caps", d.language_caps),
                                                             ("floors", d.language_floors)) if value)
    log(f"language sampling (alpha={d.alpha}, n_i in {d.sampling_unit}{bounds}):\n"
        + sampling_table(counts, probs, unit=d.sampling_unit,
                         blocks={lang: len(b) for lang, b in zip(languages, train_blocks)},
                         examples=config.train.num_steps * config.train.batch_size))
    skipped = [lang for lang, b in zip(languages, eval_blocks) if not len(b)]
    if skipped:
        log(f"not evaluated (fewer than {_EVAL_DIVISOR} sentences, none held out): {', '.join(skipped)}")
    log(f"packed {sum(map(len, train_blocks)):,} train and {sum(map(len, eval_blocks)):,} eval blocks "
        f"of {d.seq_len} tokens in {len(languages)} languages")
    return PretrainData(languages=languages, probs=[probs[lang] for lang in languages],
                        train_blocks=train_blocks, eval_blocks=eval_blocks, tokenizer=tokenizer, counts=counts)


def split_held_out(sentences: list[str], data_config) -> tuple[list[str], list[str]]:
    """(train, held-out) text of one language: the last `eval_sentences_per_language`, at most
    a tenth of it, is never trained on (nor used to train tokenizers)."""
    held_out = min(data_config.eval_sentences_per_language, len(sentences) // _EVAL_DIVISOR)
    return sentences[:len(sentences) - held_out], sentences[len(sentences) - held_out:]


def _tokenizer(config, workdir, train_text, probs, log) -> Tokenizer:
    """The run's tokenizer: loaded from the workdir when there (a resume must not retrain, and
    init_from puts the imported model's SentencePiece or WordPiece tokenizer there), else trained."""
    if workdir and tokenizer_path(workdir):
        tokenizer, path = load_tokenizer(workdir), tokenizer_path(workdir)
        if tokenizer.vocab_size != config.model.vocab_size:
            raise ConfigError(f"config field `model.vocab_size`: got {config.model.vocab_size}, but the run's "
                              f"tokenizer {path} has {tokenizer.vocab_size} ids; set "
                              f"--config.model.vocab_size={tokenizer.vocab_size} or use a new workdir")
        kind = tokenizer_kind(tokenizer)     # a WordPiece file is only ever put there, never trained
        if not config.init_from and kind != "wordpiece" and kind != config.data.tokenizer:
            raise ConfigError(f"config field `data.tokenizer`: got {config.data.tokenizer!r}, but the run's "
                              f"tokenizer {path} is {kind!r}; set --config.data.tokenizer={kind} or use a new workdir")
        log(f"tokenizer: loaded {path} ({tokenizer.vocab_size} ids)")
        return tokenizer
    d = config.data
    if d.tokenizer == "bytes":   # config.validate has checked model.vocab_size against its 261 ids
        tokenizer = ByteTokenizer()
        log(f"tokenizer: UTF-8 bytes ({tokenizer.vocab_size} ids)")
    else:
        tokenizer = train_sentencepiece(train_text, probs, config.model.vocab_size,
                                        input_sentence_size=d.tokenizer_sentences,
                                        character_coverage=d.character_coverage, byte_fallback=d.byte_fallback,
                                        seed=config.train.seed, model_type=d.tokenizer)
        log(f"tokenizer: trained a {tokenizer.vocab_size}-id SentencePiece {d.tokenizer} model on "
            f"{d.tokenizer_sentences:,} sampled sentences")
    if workdir:
        log(f"tokenizer: saved {save_tokenizer(tokenizer, workdir)}")
    return tokenizer


def _local_batch(config, process_index: int, process_count: int) -> int:
    batch = config.train.batch_size
    if batch % process_count:
        raise ConfigError(f"config field `train.batch_size`: {batch} is not divisible by the "
                          f"{process_count} processes; use a multiple of {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    return batch // process_count


def _masker(data: PretrainData, config) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    d, tokenizer = config.data, data.tokenizer
    settings = dict(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                    special_ids=tokenizer.special_ids, mask_prob=d.mask_prob, mask_token_prob=d.mask_token_prob,
                    random_token_prob=d.random_token_prob,
                    num_predictions=max_predictions(d.seq_len, d.mask_prob, d.whole_word_mask))
    if d.whole_word_mask:
        settings["word_start"] = word_start_table(tokenizer)
    if d.mask_sample_alpha:   # XLM: weights from the token counts of the training text
        settings["token_weights"] = sample_weights(token_counts(data.train_blocks, tokenizer.vocab_size),
                                                   d.mask_sample_alpha, tokenizer.special_ids)
    return lambda tokens, seed: mask_example(tokens, seed, **settings)


def _global_index(local_index, local_batch: int, global_batch: int, process_index: int):
    """Local counter -> global example index: this process's slice of each step's global batch."""
    step, j = local_index // local_batch, local_index % local_batch
    return step * global_batch + process_index * local_batch + j


def _numpy_batches(dataset: tf.data.Dataset, local_batch: int) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    dataset = dataset.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(options).as_numpy_iterator()


def train_batches(data: PretrainData, config, *, start_step: int, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Infinite MLM batches of this process from start_step on: input_ids, masked_*, language.

    Language ~ Categorical(q) and block ~ Uniform(N_language), with replacement (fairseq's
    resampling); blocks live in one CPU variable, not in the graph (which caps at 2 GB).
    """
    local_batch = _local_batch(config, process_index, process_count)
    global_batch = config.train.batch_size
    with tf.device("/CPU:0"):
        blocks = tf.Variable(np.concatenate(data.train_blocks), trainable=False, name="train_blocks")
    offsets = tf.constant(np.cumsum([0] + [len(b) for b in data.train_blocks[:-1]]), tf.int64)
    sizes = tf.constant([len(b) for b in data.train_blocks], tf.int64)
    cdf = tf.constant(np.cumsum(data.probs), tf.float64)
    seed = config.train.seed
    sample_key = tf.constant([seed, _SAMPLE_STREAM], tf.int64)
    mask_key = tf.constant([seed, _MASK_STREAM], tf.int64)
    mask = _masker(data, config)

    def example(local_index):
        g = _global_index(local_index, local_batch, global_batch, process_index)
        language_seed, block_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(sample_key, g), num=2))
        u = tf.random.stateless_uniform([], language_seed, dtype=tf.float64)
        language = tf.minimum(tf.searchsorted(cdf, u[None], side="right")[0], len(data.languages) - 1)
        language = tf.cast(language, tf.int64)
        block = tf.random.stateless_uniform([], block_seed, minval=0, maxval=sizes[language], dtype=tf.int64)
        tokens = tf.gather(blocks, offsets[language] + block)
        out = mask(tokens, tf.random.experimental.stateless_fold_in(mask_key, g))
        out["language"] = tf.cast(language, tf.int32)
        return out

    counters = tf.data.Dataset.range(start_step * local_batch, np.iinfo(np.int64).max)
    return _numpy_batches(counters.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True),
                          local_batch)


def eval_batches(data: PretrainData, config, language_index: int, *, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """data.eval_batches identical batches of one language's held-out blocks ([] when it has none)."""
    local_batch = _local_batch(config, process_index, process_count)
    global_batch = config.train.batch_size
    blocks = data.eval_blocks[language_index]
    if not len(blocks):
        return []
    table = tf.constant(blocks)
    key = tf.random.experimental.stateless_fold_in(tf.constant([_EVAL_SEED, _EVAL_STREAM], tf.int64),
                                                   language_index)
    mask = _masker(data, config)

    def example(local_index):
        g = _global_index(local_index, local_batch, global_batch, process_index)
        out = mask(tf.gather(table, g % len(blocks)), tf.random.experimental.stateless_fold_in(key, g))
        out["language"] = tf.constant(language_index, tf.int32)
        return out

    counters = tf.data.Dataset.range(config.data.eval_batches * local_batch)
    return list(_numpy_batches(counters.map(example), local_batch))
