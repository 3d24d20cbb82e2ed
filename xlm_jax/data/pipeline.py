"""This process's shards -> tokenizer -> packed blocks once per run, then stateless, resumable MLM batches.

Row j of step t's global batch belongs to shard s = j * S // B (xlm_jax.data.shards); it
is example k = t * B / S + (j - the shard's first row) of that shard's stream, a pure
function of (train.seed, s, k) and the shard's data: its language, block and mask come
from stateless TF random ops keyed on (s, k). So a resumed run sees exactly the batches it
would have seen, and any number of processes dividing S builds the same global batches,
each process from the shards it read.
"""
import dataclasses
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from xlm_jax.data.examples import pack_text
from xlm_jax.data.masking import mask_example, max_predictions, sample_weights, token_counts, word_start_table
from xlm_jax.data.sampling import language_probs, sampling_table
from xlm_jax.data.shards import row_shard
from xlm_jax.data.text import EVAL_DIVISOR, CorpusText, Processes, read_text, tokenizer_text
from xlm_jax.data.tokenizers import (ByteTokenizer, Tokenizer, load_tokenizer, save_tokenizer, tokenizer_kind,
                                     tokenizer_path, train_sentencepiece)
from xlm_jax.errors import ConfigError

_SAMPLE_STREAM, _MASK_STREAM, _EVAL_STREAM = 0, 1, 2
_EVAL_SEED = 20_200_101      # fixed, not train.seed: runs with different seeds see the same eval batches


@dataclasses.dataclass
class PretrainData:
    """This process's packed shards, and what every process agrees on."""
    languages: list[str]                 # sorted
    probs: list[float]                   # q_i aligned with languages
    counts: dict[str, int]               # n_i of q_i over all shards: training sentences or tokens (data.sampling_unit)
    tokenizer: Tokenizer
    num_shards: int                      # S
    shards: range                        # this process's
    train_blocks: list[list[np.ndarray]]  # [language][shard - shards.start] -> [N, seq_len] int32; a replicated
    eval_blocks: list[list[np.ndarray]]   # language has its whole blocks (one array) in each; [0, seq_len] if none
    evaluated: list[str]                 # languages with held-out text in every shard (replicated: at all)
    replicated: list[str] = dataclasses.field(default_factory=list)
    token_counts: np.ndarray | None = None   # [vocab] of all shards' training blocks, for data.mask_sample_alpha


def prepare_data(config, workdir: str | None, log: Callable[[str], None] = print, *,
                 processes: Processes = Processes(), text: CorpusText | None = None) -> PretrainData:
    """Reads this process's shards (unless `text` is given), gets the tokenizer (process 0 trains
    it, or everyone loads it from workdir) and packs blocks; every process calls it together."""
    d = config.data
    if text is None:
        text = read_text(config, processes, log)
    languages = text.languages
    counts, probs = text.sentence_probs()
    # Token counts need the tokenizer: one trained for a "tokens" run samples its training
    # sentences by these sentence-count q_i.
    tokenizer = processes.first("tokenizer ready", lambda log: _tokenizer(config, workdir, text, probs, log), log)

    def pack(sentences: list[str]) -> np.ndarray:
        return pack_text(tokenizer.encode(sentences), d.seq_len, tokenizer, d.packing)

    def blocks(lang: str, shards: list[list[str]]) -> list[np.ndarray]:   # a replicated language is packed once
        return [pack(shards[0])] * len(shards) if lang in text.replicated else [pack(x) for x in shards]

    train_blocks = [blocks(lang, text.train[lang]) for lang in languages]
    eval_blocks = [blocks(lang, text.held_out[lang]) for lang in languages]
    totals = _global_totals(text, train_blocks, eval_blocks, tokenizer, processes,
                            vocab_size=tokenizer.vocab_size if d.mask_sample_alpha else 0)
    if d.sampling_unit == "tokens":  # every token of the packed text but padding, <s> and </s> included
        counts = dict(zip(languages, totals["tokens"].tolist()))
        probs = language_probs(counts, d.alpha, d.language_caps, d.language_floors)
    bounds = "".join(f", {name} {value}" for name, value in (("caps", d.language_caps),
                                                             ("floors", d.language_floors)) if value)
    log(f"language sampling (alpha={d.alpha}, n_i in {d.sampling_unit}{bounds}):\n"
        + sampling_table(counts, probs, unit=d.sampling_unit, blocks=dict(zip(languages, totals["blocks"].tolist())),
                         examples=config.train.num_steps * config.train.batch_size))
    evaluated = [lang for lang in languages if text.held_out_sizes(lang).min() > 0]
    skipped = [lang for lang in languages if lang not in evaluated]
    if skipped:
        log(f"not evaluated (no held-out text: fewer than {EVAL_DIVISOR} sentences, or "
            f"data.eval_sentences_per_language=0): {', '.join(skipped)}")
    log(f"packed {totals['blocks'].sum():,} train and {totals['eval_blocks'].sum():,} eval blocks "
        f"of {d.seq_len} tokens in {len(languages)} languages over {text.plan.num_shards} shards")
    return PretrainData(languages=languages, probs=[probs[lang] for lang in languages], counts=counts,
                        tokenizer=tokenizer, num_shards=text.plan.num_shards, shards=text.shards,
                        train_blocks=train_blocks, eval_blocks=eval_blocks, evaluated=evaluated,
                        replicated=list(text.replicated), token_counts=totals.get("token_counts"))


def _global_totals(text: CorpusText, train_blocks, eval_blocks, tokenizer, processes: Processes,
                   vocab_size: int) -> dict[str, np.ndarray]:
    """Per language over all shards: "tokens" (non-padding, of the training blocks), "blocks",
    "eval_blocks"; and "token_counts" [vocab] of all training blocks when vocab_size > 0.
    Each process counts its shards; a replicated language, which every process holds, is
    counted once, after the sum."""
    shape = (3, len(text.languages))
    local, replicated = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    ids_local, ids_replicated = np.zeros(vocab_size, np.int64), np.zeros(vocab_size, np.int64)
    for i, lang in enumerate(text.languages):
        shards = [train_blocks[i][0]] if lang in text.replicated else train_blocks[i]
        held = [eval_blocks[i][0]] if lang in text.replicated else eval_blocks[i]
        into, ids = (replicated, ids_replicated) if lang in text.replicated else (local, ids_local)
        into[:, i] = (sum(int(np.count_nonzero(b != tokenizer.pad_id)) for b in shards),
                      sum(map(len, shards)), sum(map(len, held)))
        if vocab_size:
            ids += token_counts(shards, vocab_size)
    summed = processes.sum(np.concatenate([local.ravel(), ids_local])) + np.concatenate([replicated.ravel(),
                                                                                         ids_replicated])
    totals = dict(zip(("tokens", "blocks", "eval_blocks"), summed[:local.size].reshape(shape)))
    if vocab_size:
        totals["token_counts"] = summed[local.size:]
    return totals


def _tokenizer(config, workdir, text: CorpusText, probs, log) -> Tokenizer:
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
        tokenizer = train_sentencepiece(tokenizer_text(text, probs, d.tokenizer_sentences), probs,
                                        config.model.vocab_size,
                                        input_sentence_size=d.tokenizer_sentences,
                                        character_coverage=d.character_coverage, byte_fallback=d.byte_fallback,
                                        seed=config.train.seed, model_type=d.tokenizer)
        log(f"tokenizer: trained a {tokenizer.vocab_size}-id SentencePiece {d.tokenizer} model on "
            f"{d.tokenizer_sentences:,} sampled sentences")
    if workdir:
        log(f"tokenizer: saved {save_tokenizer(tokenizer, workdir)}")
    return tokenizer


def _masker(data: PretrainData, config) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    d, tokenizer = config.data, data.tokenizer
    settings = dict(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                    special_ids=tokenizer.special_ids, mask_prob=d.mask_prob, mask_token_prob=d.mask_token_prob,
                    random_token_prob=d.random_token_prob,
                    num_predictions=max_predictions(d.seq_len, d.mask_prob, d.whole_word_mask))
    if d.whole_word_mask:
        settings["word_start"] = word_start_table(tokenizer)
    if d.mask_sample_alpha:   # XLM: weights from the token counts of the training text, all shards
        settings["token_weights"] = sample_weights(data.token_counts, d.mask_sample_alpha, tokenizer.special_ids)
    return lambda tokens, seed: mask_example(tokens, seed, **settings)


def _rows(data: PretrainData, config) -> tuple[int, int, int]:
    """(rows this process builds of each global batch, its first row, rows per shard)."""
    per_shard = config.train.batch_size // data.num_shards
    return len(data.shards) * per_shard, data.shards.start * per_shard, per_shard


def _example_key(key: tf.Tensor, shard, index) -> tf.Tensor:
    """The stateless seed of example `index` of `shard`'s stream."""
    return tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(key, shard), index)


def batch_spec(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The global shape and dtype of each array of a train batch (what train_batches yields,
    all processes' rows together): for compiling the step ahead of time without data."""
    d, b = config.data, config.train.batch_size
    slots = max_predictions(d.seq_len, d.mask_prob, d.whole_word_mask)
    return {"input_ids": ((b, d.seq_len), np.dtype(np.int32)),
            "masked_positions": ((b, slots), np.dtype(np.int32)),
            "masked_ids": ((b, slots), np.dtype(np.int32)),
            "masked_weights": ((b, slots), np.dtype(np.float32)),
            "language": ((b,), np.dtype(np.int32))}


def _numpy_batches(dataset: tf.data.Dataset, local_batch: int) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    dataset = dataset.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(options).as_numpy_iterator()


def train_batches(data: PretrainData, config, *, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Infinite MLM batches of this process from start_step on: input_ids, masked_*, language.

    Row j of a step is example k of shard s (module doc): language ~ Categorical(q), block ~
    Uniform over the shard's blocks of that language (all of a replicated language's), with
    replacement (fairseq's resampling); blocks live in one CPU variable, not in the graph
    (which caps at 2 GB).
    """
    local_batch, first_row, per_shard = _rows(data, config)
    tables, where, stored = [], {}, 0
    offsets = np.zeros((len(data.languages), len(data.shards)), np.int64)    # [language, own shard]
    sizes = np.zeros_like(offsets)
    for i, shards in enumerate(data.train_blocks):
        for j, blocks in enumerate(shards):
            if id(blocks) not in where:     # a replicated language's blocks are stored once
                where[id(blocks)], stored = stored, stored + len(blocks)
                tables.append(blocks)
            offsets[i, j], sizes[i, j] = where[id(blocks)], len(blocks)
    with tf.device("/CPU:0"):
        table = tf.Variable(np.concatenate(tables), trainable=False, name="train_blocks")
    offsets, sizes = tf.constant(offsets.ravel()), tf.constant(sizes.ravel())
    cdf = tf.constant(np.cumsum(data.probs), tf.float64)
    seed, first_shard, num_languages = config.train.seed, data.shards.start, len(data.languages)
    batch = config.train.batch_size
    sample_key = tf.constant([seed, _SAMPLE_STREAM], tf.int64)
    mask_key = tf.constant([seed, _MASK_STREAM], tf.int64)
    mask = _masker(data, config)

    def example(local_index):
        step, row = local_index // local_batch, first_row + local_index % local_batch
        shard, index = row_shard(row, batch, data.num_shards), step * per_shard + row % per_shard
        language_seed, block_seed = tf.unstack(tf.random.experimental.stateless_split(
            _example_key(sample_key, shard, index), num=2))
        u = tf.random.stateless_uniform([], language_seed, dtype=tf.float64)
        language = tf.minimum(tf.searchsorted(cdf, u[None], side="right")[0], num_languages - 1)
        cell = tf.cast(language, tf.int64) * len(data.shards) + shard - first_shard
        block = tf.random.stateless_uniform([], block_seed, minval=0, maxval=sizes[cell], dtype=tf.int64)
        out = mask(tf.gather(table, offsets[cell] + block), _example_key(mask_key, shard, index))
        out["language"] = tf.cast(language, tf.int32)
        return out

    counters = tf.data.Dataset.range(start_step * local_batch, np.iinfo(np.int64).max)
    return _numpy_batches(counters.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True),
                          local_batch)


def eval_batches(data: PretrainData, config, language_index: int) -> list[dict[str, np.ndarray]]:
    """data.eval_batches identical batches of one language's held-out blocks ([] when not evaluated).

    Row j of eval batch b is example k = b * B / S + (j - the shard's first row) of its shard
    s: block k of the shard's held-out blocks (cycled), or, for a replicated language, block
    b * B + j of all its held-out blocks; masked keyed on (s, k).
    """
    if data.languages[language_index] not in data.evaluated:
        return []
    local_batch, first_row, per_shard = _rows(data, config)
    batch, replicated = config.train.batch_size, data.languages[language_index] in data.replicated
    tokens, shards, indices = [], [], []
    for b in range(config.data.eval_batches):
        for row in range(first_row, first_row + local_batch):
            shard, index = row_shard(row, batch, data.num_shards), b * per_shard + row % per_shard
            blocks = data.eval_blocks[language_index][shard - data.shards.start]
            tokens.append(blocks[(b * batch + row if replicated else index) % len(blocks)])
            shards.append(shard)
            indices.append(index)
    key = tf.random.experimental.stateless_fold_in(tf.constant([_EVAL_SEED, _EVAL_STREAM], tf.int64),
                                                   language_index)
    mask = _masker(data, config)

    def example(row_tokens, shard, index):
        out = mask(row_tokens, _example_key(key, shard, index))
        out["language"] = tf.constant(language_index, tf.int32)
        return out

    rows = tf.data.Dataset.from_tensor_slices((np.stack(tokens), np.array(shards, np.int64),
                                               np.array(indices, np.int64)))
    return list(_numpy_batches(rows.map(example), local_batch))
