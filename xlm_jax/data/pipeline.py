"""Stateless, resumable batches of every stream (xlm_jax.data.streams) from the data that
xlm_jax.data.prepare packed once per run (blocks, tokenized translation pairs).

Row j of step t's global batch of stream o (B_o rows) belongs to shard s = j * S // B_o
(xlm_jax.data.shards); it is example k = t * B_o / S + (j - the shard's first row) of that
shard's stream o, a pure function of (train.seed, o, s, k) and the shard's data: its
language (or language pair and source: real or synthetic), block (or pair), direction and mask come from stateless TF
random ops keyed on (s, k) under stream o's keys. So a resumed run sees exactly the batches
it would have seen, any number of processes dividing S builds the same global batches, each
process from the shards it read, and adding a stream changes no other stream's rows. The
stream named "mlm" of kind "blocks" keeps the keys the pipeline had before streams had names,
so that checkpoints written then resume on the same batches; every other stream's keys derive
from its name.
"""
import functools
import itertools
import zlib
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from xlm_jax.data.examples import fair_lengths
from xlm_jax.data.masking import mask_example, max_predictions, sample_weights, word_start_table
from xlm_jax.data.prepare import PretrainData
from xlm_jax.data.shards import row_shard
from xlm_jax.data.streams import PAIR_KINDS, StreamSpec, check_schedule, check_streams, stream_fields

_SAMPLE_STREAM, _MASK_STREAM, _EVAL_STREAM = 0, 1, 2
_EVAL_SEED = 20_200_101      # fixed, not train.seed: runs with different seeds see the same eval batches


def _masker(data: PretrainData, config) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    d, tokenizer = config.data, data.tokenizer
    settings = dict(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                    special_ids=tokenizer.special_ids, mask_prob=d.mask_prob, mask_token_prob=d.mask_token_prob,
                    random_token_prob=d.random_token_prob,
                    num_predictions=max_predictions(d.seq_len, d.mask_prob, d.whole_word_mask))
    if tokenizer.languages:   # data.language_id_ranges
        if d.random_token_language == "same":   # a random replacement stays in its token's language
            settings["language_range_size"] = tokenizer.range_size
        settings["random_ids"] = tokenizer.ordinary_ids
        if not tokenizer.shared_specials:   # each language's tokens masked by its own <mask>
            settings["mask_ids"] = tokenizer.own_mask_ids()
    if d.whole_word_mask:
        settings["word_start"] = word_start_table(tokenizer)
    if d.mask_sample_alpha:   # XLM: weights from the token counts of the training text, all shards
        settings["token_weights"] = sample_weights(data.token_counts, d.mask_sample_alpha, tokenizer.special_ids)
    return lambda tokens, seed: mask_example(tokens, seed, **settings)


def _rows(data: PretrainData, batch_size: int) -> tuple[int, int, int]:
    """(rows this process builds of each global batch of batch_size rows, its first row, rows per shard)."""
    per_shard = batch_size // data.num_shards
    return len(data.shards) * per_shard, data.shards.start * per_shard, per_shard


def _example_key(key: tf.Tensor, shard, index) -> tf.Tensor:
    """The stateless seed of example `index` of `shard`'s stream."""
    return tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(key, shard), index)


def _stream_keys(spec: StreamSpec, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(sampling key, masking key) of a stream: the MLM-only pipeline's for the stream "mlm" of
    blocks, so its batches stay those of earlier runs; else folded with the CRC-32 of the name."""
    sample_key, mask_key = tf.constant([seed, _SAMPLE_STREAM], tf.int64), tf.constant([seed, _MASK_STREAM], tf.int64)
    if (spec.name, spec.kind) == ("mlm", "blocks"):
        return sample_key, mask_key
    tag = tf.constant(zlib.crc32(spec.name.encode("utf-8")), tf.int64)
    return (tf.random.experimental.stateless_fold_in(sample_key, tag),
            tf.random.experimental.stateless_fold_in(mask_key, tag))


def _categorical(cdf: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """int32 index i with probability cdf[i] - cdf[i - 1]."""
    u = tf.random.stateless_uniform([], seed, dtype=tf.float64)
    return tf.minimum(tf.searchsorted(cdf, u[None], side="right")[0], cdf.shape[0] - 1)


def _numpy_batches(dataset: tf.data.Dataset, local_batch: int) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    dataset = dataset.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(options).as_numpy_iterator()


class _Tables:
    """The CPU variables the streams of one train_batches call gather from, each built on first use
    and shared by the streams of its kind: in variables, not in the graph (which caps at 2 GB)."""

    def __init__(self, data: PretrainData):
        self.data = data

    @functools.cached_property
    def blocks(self) -> tuple[tf.Variable, tf.Tensor, tf.Tensor]:
        """(every own block [N, seq_len], first block and block count of each (language, own shard))."""
        tables, where, stored = [], {}, 0
        offsets = np.zeros((len(self.data.languages), len(self.data.shards)), np.int64)    # [language, own shard]
        sizes = np.zeros_like(offsets)
        for i, shards in enumerate(self.data.train_blocks):
            for j, blocks in enumerate(shards):
                if id(blocks) not in where:     # a replicated language's blocks are stored once
                    where[id(blocks)], stored = stored, stored + len(blocks)
                    tables.append(blocks)
                offsets[i, j], sizes[i, j] = where[id(blocks)], len(blocks)
        with tf.device("/CPU:0"):
            table = tf.Variable(np.concatenate(tables), trainable=False, name="train_blocks")
        return table, tf.constant(offsets.ravel()), tf.constant(sizes.ravel())

    @functools.cached_property
    def pairs(self) -> tuple[tf.Variable, tf.Variable, tf.Tensor, tf.Tensor]:
        """(every own pair's tokens, flat; side offsets [2R + 1] of the R pairs, all tables in a row;
        first pair and pair count of each (source, language pair, own shard), source 0 the real
        pairs and 1 the synthetic ones if any): PairTable's layout, joined."""
        tokens, offsets, where, rows, stored = [], [], {}, 0, 0
        sources = [self.data.train_pairs] + ([self.data.synthetic_train_pairs] if self.data.synthetic_train_pairs
                                             else [])
        first = np.zeros((len(sources), len(self.data.pairs), len(self.data.shards)), np.int64)
        sizes = np.zeros_like(first)
        for s, source in enumerate(sources):
            for i, shards in enumerate(source):
                for j, table in enumerate(shards):
                    if id(table) not in where:     # a replicated pair's table is stored once
                        where[id(table)], rows = rows, rows + len(table)
                        tokens.append(table.tokens)
                        offsets.append(table.offsets[:-1] + stored)
                        stored += len(table.tokens)
                    first[s, i, j], sizes[s, i, j] = where[id(table)], len(table)
        with tf.device("/CPU:0"):
            token_table = tf.Variable(np.concatenate(tokens), trainable=False, name="train_pair_tokens")
            offset_table = tf.Variable(np.concatenate(offsets + [[stored]]), trainable=False, name="train_pair_offsets")
        return token_table, offset_table, tf.constant(first.ravel()), tf.constant(sizes.ravel())


def train_batches(data: PretrainData, config, *, start_step: int, streams: list[StreamSpec],
                  schedule: str = "sum") -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """Infinite batches of this process from step counter start_step on: {stream name: {field:
    this process's rows}} (fields: streams.stream_fields).

    `streams` are what the run's objectives read (objectives/registry.streams). schedule
    "sum": every stream every step (InfoXLM); "alternate": only stream c % len(streams) at
    step counter c (XLM). Either way a stream's rows at counter c are the same (module doc).
    """
    specs = list(streams)
    check_streams(specs, data.num_shards, data.num_shards // len(data.shards))
    check_schedule(schedule)
    for spec in specs:
        if spec.kind in PAIR_KINDS and not data.pairs:
            raise ValueError(f"stream {spec.name!r} ({spec.kind}) reads translation pairs: prepare_data(..., "
                             f"pairs=True)")
    every = 1 if schedule == "sum" else len(specs)
    tables = _Tables(data)
    batches = {}
    for o, spec in enumerate(specs):   # stream o's first step counter at or after start_step
        first_step = start_step + (o - start_step) % every
        batches[spec.name] = _stream_batches(data, config, spec, tables, first_step, every)
    return _scheduled(batches, start_step, every)


def _scheduled(batches: dict[str, Iterator], start_step: int, every: int) -> Iterator[dict[str, dict]]:
    names = list(batches)
    for counter in itertools.count(start_step):
        active = names if every == 1 else [names[counter % every]]
        yield {name: next(batches[name]) for name in active}


def _stream_batches(data: PretrainData, config, spec: StreamSpec, tables: _Tables, first_step: int,
                    stride: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of one stream at step counters first_step, first_step + stride, ..."""
    local_batch, first_row, per_shard = _rows(data, spec.batch_size)
    build = {"blocks": _block_examples, "tlm": _tlm_examples, "pairs": _pair_examples}[spec.kind](
        data, config, spec, tables)

    def example(local_index):
        step = first_step + local_index // local_batch * stride
        row = first_row + local_index % local_batch
        shard = row_shard(row, spec.batch_size, data.num_shards)
        return build(shard, step * per_shard + row % per_shard)

    counters = tf.data.Dataset.range(np.iinfo(np.int64).max)
    return _numpy_batches(counters.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True),
                          local_batch)


def _block_examples(data: PretrainData, config, spec: StreamSpec, tables: _Tables):
    """(shard, index) -> a masked MLM example: language ~ Categorical(q), block ~ Uniform over the
    shard's blocks of that language (all of a replicated language's), with replacement
    (fairseq's resampling)."""
    table, offsets, sizes = tables.blocks
    cdf = tf.constant(np.cumsum(data.probs), tf.float64)
    sample_key, mask_key = _stream_keys(spec, config.train.seed)
    mask, own, first_shard = _masker(data, config), len(data.shards), data.shards.start
    language_ids = config.model.num_languages > 0

    def build(shard, index):
        language_seed, block_seed = tf.unstack(tf.random.experimental.stateless_split(
            _example_key(sample_key, shard, index), num=2))
        language = _categorical(cdf, language_seed)
        cell = tf.cast(language, tf.int64) * own + shard - first_shard
        block = tf.random.stateless_uniform([], block_seed, minval=0, maxval=sizes[cell], dtype=tf.int64)
        out = mask(tf.gather(table, offsets[cell] + block), _example_key(mask_key, shard, index))
        out["language"] = tf.cast(language, tf.int32)
        if language_ids:
            out["language_ids"] = tf.fill([config.data.seq_len], out["language"])
        return out

    return build


def _pair_draw(data: PretrainData, config, spec: StreamSpec, tables: _Tables):
    """(shard, index) -> (first side's ids, second side's ids, their language indices, the pair's
    weight): language pair ~ Categorical(pair q), synthetic ~ Bernoulli(its synthetic fraction,
    xlm_jax.data.synthetic), pair ~ Uniform over the shard's pairs of that source (all of a
    replicated pair's), then src -> tgt or tgt -> src by a fair coin (both directions, as XLM and
    InfoXLM). The weight is 1 for a real pair and data.synthetic_weight for a synthetic one."""
    tokens, offsets, firsts, sizes = tables.pairs
    cdf = tf.constant(np.cumsum(data.pair_probs), tf.float64)
    fractions = tf.constant(data.synthetic_fractions or [0.0] * len(data.pairs), tf.float64)
    weight = tf.constant(config.data.synthetic_weight, tf.float32)
    sides = tf.constant([[data.languages.index(lang) for lang in pair] for pair in data.pairs], tf.int32)
    sample_key, _ = _stream_keys(spec, config.train.seed)
    own, first_shard, num_pairs = len(data.shards), data.shards.start, len(data.pairs)

    def draw(shard, index):
        # The first three of a 4-way split are those of a 3-way one: without synthetic pairs, the
        # rows are those drawn before they existed.
        pair_seed, row_seed, direction_seed, source_seed = tf.unstack(tf.random.experimental.stateless_split(
            _example_key(sample_key, shard, index), num=4))
        pair = _categorical(cdf, pair_seed)
        synthetic = tf.random.stateless_uniform([], source_seed, dtype=tf.float64) < fractions[pair]
        cell = (tf.cast(synthetic, tf.int64) * num_pairs + tf.cast(pair, tf.int64)) * own + shard - first_shard
        row = firsts[cell] + tf.random.stateless_uniform([], row_seed, minval=0, maxval=sizes[cell], dtype=tf.int64)
        start, middle, end = tf.unstack(tf.gather(offsets, 2 * row + tf.range(3, dtype=tf.int64)))
        swap = tf.random.stateless_uniform([], direction_seed, minval=0, maxval=2, dtype=tf.int32) > 0
        first = tf.gather(tokens, tf.range(tf.where(swap, middle, start), tf.where(swap, end, middle)))
        second = tf.gather(tokens, tf.range(tf.where(swap, start, middle), tf.where(swap, middle, end)))
        src_language, tgt_language = tf.unstack(sides[pair])
        return (first, second, tf.where(swap, tgt_language, src_language),
                tf.where(swap, src_language, tgt_language), tf.where(synthetic, weight, 1.0))

    return draw


def _tlm_examples(data: PretrainData, config, spec: StreamSpec, tables: _Tables):
    """(shard, index) -> a drawn pair as a masked TLM sequence (tlm_layout), masked over both sides
    by the blocks' masker."""
    draw, mask = _pair_draw(data, config, spec, tables), _masker(data, config)
    _, mask_key = _stream_keys(spec, config.train.seed)
    language_ids, weighted = config.model.num_languages > 0, "pair_weight" in stream_fields(spec, config)

    def build(shard, index):
        first, second, first_language, second_language, weight = draw(shard, index)
        layout = tlm_layout(first, second, config.data.seq_len, data.tokenizer, positions=spec.positions,
                            position_offset=config.model.position_offset, src_lang=first_language,
                            tgt_lang=second_language)
        out = mask(layout["input_ids"], _example_key(mask_key, shard, index))
        out["position_ids"], out["language"] = layout["position_ids"], first_language
        if language_ids:
            out["language_ids"] = layout["language_ids"]
        if weighted:
            out["pair_weight"] = weight
        return out

    return build


def _pair_examples(data: PretrainData, config, spec: StreamSpec, tables: _Tables):
    """(shard, index) -> a drawn pair's sides, each alone as `<s> x </s>` (single_layout)."""
    draw = _pair_draw(data, config, spec, tables)
    weighted = "pair_weight" in stream_fields(spec, config)

    def build(shard, index):
        first, second, first_language, second_language, weight = draw(shard, index)
        out = {"src_ids": single_layout(first, config.data.seq_len, data.tokenizer),
               "tgt_ids": single_layout(second, config.data.seq_len, data.tokenizer),
               "src_language": first_language, "tgt_language": second_language}
        if weighted:
            out["pair_weight"] = weight
        return out

    return build


def tlm_layout(src_ids: tf.Tensor, tgt_ids: tf.Tensor, seq_len: int, tok, *, positions: str, position_offset: int,
               src_lang, tgt_lang) -> dict[str, tf.Tensor]:
    """examples.tlm_example in TF ops (the same layout, truncation, positions and language ids),
    for tf.data: int32 [seq_len] input_ids, position_ids, language_ids."""
    keep_src, keep_tgt = fair_lengths(tf.size(src_ids), tf.size(tgt_ids), seq_len - 4, tf.where)
    ids = tf.concat([[tok.bos_id], src_ids[:keep_src], [tok.eos_id, tok.eos_id], tgt_ids[:keep_tgt],
                     [tok.eos_id]], axis=0)
    first, used = keep_src + 2, keep_src + keep_tgt + 4      # <s> src </s> | </s> tgt </s>
    ids = tf.reshape(tf.pad(ids, [[0, seq_len - used]], constant_values=tok.pad_id), [seq_len])
    i = tf.range(seq_len)
    padding = position_offset - 1 if position_offset else 0
    counted = i if positions == "continuous" else tf.where(i < first, i, i - first)
    position_ids = tf.where(i < used, position_offset + counted, padding)
    language_ids = tf.where((i >= first) & (i < used), tgt_lang, src_lang)
    return {"input_ids": ids, "position_ids": position_ids, "language_ids": language_ids}


def single_layout(ids: tf.Tensor, seq_len: int, tok) -> tf.Tensor:
    """One side of examples.xlco_pair in TF ops: `<s> x </s>` cut to seq_len - 2 tokens, padded; int32 [seq_len]."""
    body = ids[:seq_len - 2]
    out = tf.concat([[tok.bos_id], body, [tok.eos_id]], axis=0)
    return tf.reshape(tf.pad(out, [[0, seq_len - 2 - tf.size(body)]], constant_values=tok.pad_id), [seq_len])


def eval_batches(data: PretrainData, config, language_index: int) -> list[dict[str, np.ndarray]]:
    """data.eval_batches identical batches of one language's held-out blocks ([] when not evaluated).

    Row j of eval batch b is example k = b * B / S + (j - the shard's first row) of its shard
    s: block k of the shard's held-out blocks (cycled), or, for a replicated language, block
    b * B + j of all its held-out blocks; masked keyed on (s, k). The fields of a "blocks" stream
    (streams.stream_fields), language_ids included when model.num_languages > 0.
    """
    if data.languages[language_index] not in data.evaluated:
        return []
    local_batch, first_row, per_shard = _rows(data, config.train.batch_size)
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
        if config.model.num_languages > 0:
            out["language_ids"] = tf.fill([config.data.seq_len], out["language"])
        return out

    rows = tf.data.Dataset.from_tensor_slices((np.stack(tokens), np.array(shards, np.int64),
                                               np.array(indices, np.int64)))
    return list(_numpy_batches(rows.map(example), local_batch))
