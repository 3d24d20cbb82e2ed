"""Per-objective batch streams on real text: the batch format, pair preparation, the TLM and pair
rows against examples.tlm_example / xlco_pair, keys, schedules, resume and process counts.

The corpus: monolingual en, sw, yo (yo small enough to be replicated) and two TSVs of real
translation pairs, en-de (Tatoeba) and en-sw (TICO-19; 24 pairs, fewer than 10 per shard, so
replicated although neither of its languages is). Processes are threads (tests/data/processes.py).
"""
import functools
import glob
import re

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import objective_streams
from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data import pipeline
from xlm_jax.data.examples import _fair_lengths, fair_lengths, tlm_example, xlco_pair
from xlm_jax.data.gettext_corpus import DEFAULT_LOCALE_DIRS
from xlm_jax.data.masking import mask_example, max_predictions
from xlm_jax.data.pipeline import train_batches
from xlm_jax.data.prepare import prepare_data
from xlm_jax.data.sampling import temperature_probs
from xlm_jax.data.streams import Field, StreamSpec, batch_spec, check_streams, stream_fields
from xlm_jax.data.text import read_text
from xlm_jax.errors import ConfigError, DataError

from processes import run_processes

SHARDS, SEQ_LEN, LANGUAGES = 4, 32, ["de", "en", "sw", "yo"]
MONO = {"en": 200, "sw": 120, "yo": 25}
PAIRS = {("en", "de"): ("tatoeba_challenge", 160), ("en", "sw"): ("tico19", 24)}
MLM = StreamSpec("mlm", "blocks", 8)
TLM = StreamSpec("tlm", "tlm", 8, positions="reset")
XLCO = StreamSpec("xlco", "pairs", 4)


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for lang, n in MONO.items():
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:n]
        (root / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for (src, tgt), (source, n) in PAIRS.items():
        lines = (shared_data / "parallel" / source / f"{src}-{tgt}.tsv").read_text(encoding="utf-8").split("\n")[:n]
        (root / f"{src}-{tgt}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _config(corpus, **model):
    c = default_config()
    c.data.corpus_dir, c.data.seq_len, c.data.shards, c.data.alpha = str(corpus), SEQ_LEN, SHARDS, 0.5
    c.data.eval_sentences_per_language, c.data.tokenizer_sentences, c.data.byte_fallback = 20, 2000, False
    c.model.vocab_size, c.model.num_languages, c.train.batch_size, c.train.seed = 400, 4, 8, 11
    c.model.update(model)
    return validate(c)


@pytest.fixture(scope="module")
def config(corpus):
    return _config(corpus)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def prepared(config, workdir):
    logs = []
    return prepare_data(config, workdir, log=logs.append, pairs=True), "\n".join(logs)


@pytest.fixture(scope="module")
def text(config):
    return read_text(config, log=lambda _: None, pairs=True)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(a: dict, b: dict):
    """Two steps' {stream: batch} (or two batches) hold the same arrays."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _originals(batch):
    """The uncorrupted sequences: masked_ids put back at masked_positions."""
    tokens = batch["input_ids"].copy()
    for row, positions, ids, weights in zip(tokens, batch["masked_positions"], batch["masked_ids"],
                                            batch["masked_weights"]):
        row[positions[weights > 0]] = ids[weights > 0]
    return tokens


def _tsv_rows(corpus, pair):
    lines = (corpus / f"{pair[0]}-{pair[1]}.tsv").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")) for line in lines]


# --- the batch format ----------------------------------------------------------------------------


def test_stream_fields_and_batch_spec(config, corpus):
    slots = max_predictions(SEQ_LEN, 0.15)
    tokens, scalar = Field((SEQ_LEN,), np.dtype(np.int32), ("length",)), Field((), np.dtype(np.int32), ())
    masked = {"masked_positions": Field((slots,), np.dtype(np.int32), ("predictions",)),
              "masked_ids": Field((slots,), np.dtype(np.int32), ("predictions",)),
              "masked_weights": Field((slots,), np.dtype(np.float32), ("predictions",))}
    assert stream_fields(MLM, config) == {"input_ids": tokens, **masked, "language": scalar, "language_ids": tokens}
    assert stream_fields(TLM, config) == {"input_ids": tokens, "position_ids": tokens, **masked, "language": scalar,
                                          "language_ids": tokens}
    pairs = {"src_ids": tokens, "tgt_ids": tokens, "src_language": scalar, "tgt_language": scalar}
    assert stream_fields(XLCO, config) == pairs
    no_embeddings = _config(corpus, num_languages=0)   # XLM-R: no language embeddings, no language_ids
    assert "language_ids" not in stream_fields(MLM, no_embeddings) | stream_fields(TLM, no_embeddings)
    assert stream_fields(XLCO, no_embeddings) == pairs
    spec = batch_spec([MLM, TLM, XLCO], config)
    assert spec["mlm"]["masked_weights"] == ((8, slots), np.dtype(np.float32))
    assert spec["tlm"]["position_ids"] == ((8, SEQ_LEN), np.dtype(np.int32))
    assert spec["xlco"] == {key: ((4, *field.shape), field.dtype) for key, field in pairs.items()}


def test_batches_have_the_declared_shapes(prepared, config):
    data, _ = prepared
    step = next(train_batches(data, config, start_step=0, streams=[MLM, TLM, XLCO]))
    assert {name: {key: (v.shape, v.dtype) for key, v in batch.items()} for name, batch in step.items()} == \
        batch_spec([MLM, TLM, XLCO], config)
    en = LANGUAGES.index("en")   # held-out batches are blocks too, language_ids included
    held_out = pipeline.eval_batches(data, config, en)[0]
    assert {key: (v.shape, v.dtype) for key, v in held_out.items()} == batch_spec([MLM], config)["mlm"]
    assert np.all(held_out["language_ids"] == en)


def test_batch_sizes_must_split_over_the_shards(prepared, config):
    data, _ = prepared
    with pytest.raises(ConfigError, match=r"`tlm.batch_size`: got 6; .*multiple of the 4 data shards.*e.g. 4, 8"):
        train_batches(data, config, start_step=0, streams=[MLM, StreamSpec("tlm", "tlm", 6)])
    with pytest.raises(ConfigError, match=r"`xlco.batch_size`: got 0"):
        batch_spec([StreamSpec("xlco", "pairs", 0)], config)
    with pytest.raises(ConfigError, match=r"`mlm.batch_size`: got 5; .*the 2 data shards .*the 2 process\(es\)"):
        check_streams([StreamSpec("mlm", "blocks", 5)], num_shards=2, process_count=2)
    with pytest.raises(ConfigError, match=r"`tlm.positions`: got 'absolute'"):
        check_streams([StreamSpec("tlm", "tlm", 8, positions="absolute")], 4)
    with pytest.raises(ConfigError, match=r"`objective_schedule`: got 'mixed'"):
        train_batches(data, config, start_step=0, schedule="mixed", streams=objective_streams(config))
    with pytest.raises(ValueError, match="distinct names"):
        check_streams([MLM, MLM], 4)


# --- preparing pairs -----------------------------------------------------------------------------


def test_prepare_data_reads_counts_and_samples_the_pairs(prepared, corpus):
    data, log = prepared
    assert data.languages == LANGUAGES and data.replicated == ["yo"]
    assert data.pairs == [("en", "de"), ("en", "sw")] and data.replicated_pairs == [("en", "sw")]
    assert data.pair_counts == {pair: n for pair, (_, n) in PAIRS.items()}
    q = temperature_probs({"en-de": 160, "en-sw": 24}, 0.5)
    assert data.pair_probs == pytest.approx([q["en-de"], q["en-sw"]])
    rows = {line.split()[0]: line.split()[1:] for line in log.split("language-pair sampling")[1].splitlines()[2:4]}
    assert rows == {"en-de": ["160", f"{160 / 184:.4f}", f"{q['en-de']:.4f}"],
                    "en-sw": ["24", f"{24 / 184:.4f}", f"{q['en-sw']:.4f}"]}
    assert re.search(r"translation pairs: 184 in 2 language pairs over 4 shards; replicated .*: en-sw", log)
    tok = data.tokenizer
    for pair, shards in zip(data.pairs, data.train_pairs):
        expected = [ids[:SEQ_LEN - 2] for ids in tok.encode([side for row in _tsv_rows(corpus, pair) for side in row])]
        if pair in data.replicated_pairs:   # every shard samples from all of it, stored once
            assert all(table is shards[0] for table in shards)
            shards = shards[:1]
        else:                               # the shards' byte ranges, in order, are the whole file
            assert all(len(table) >= 10 for table in shards)
        got = [side for table in shards for i in range(len(table)) for side in table.pair(i)]
        assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_a_corpus_without_pairs_is_a_data_error(shared_data, tmp_path):
    for lang in ("en", "sw"):
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:100]
        (tmp_path / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = _config(tmp_path, num_languages=0)
    with pytest.raises(DataError, match=r"no translation pairs.*<src>-<tgt>\.tsv.*data\.corpus_dir or data\.files"
                                        r".*data\.prepared_corpus.*built-in gettext corpus"):
        prepare_data(config, str(tmp_path / "run"), log=lambda _: None, pairs=True)


def test_language_embeddings_need_a_row_per_corpus_language(corpus, text, tmp_path):
    with pytest.raises(ConfigError, match=r"`model.num_languages`: got 3, but the corpus has 4 languages "
                                          r"\(de, en, sw, yo\); set --config.model.num_languages=4"):
        prepare_data(_config(corpus, num_languages=3), str(tmp_path), log=lambda _: None, text=text, pairs=True)


# --- rows ----------------------------------------------------------------------------------------


def test_the_mlm_stream_keeps_the_mlm_only_keys(prepared, config):
    """Stream "mlm" of blocks: row j at step c is the language, block and mask drawn under the keys
    (seed, 0) and (seed, 1) of the MLM-only pipeline, re-derived here; adding streams changes nothing."""
    data, _ = prepared
    alone = _take(train_batches(data, config, start_step=2, streams=objective_streams(config)), 2)
    mixed = _take(train_batches(data, config, start_step=2, streams=[TLM, MLM, XLCO]), 2)
    tok, fold = data.tokenizer, tf.random.experimental.stateless_fold_in
    d = config.data
    settings = dict(vocab_size=tok.vocab_size, mask_id=tok.mask_id, special_ids=tok.special_ids, mask_prob=d.mask_prob,
                    mask_token_prob=d.mask_token_prob, random_token_prob=d.random_token_prob,
                    num_predictions=max_predictions(SEQ_LEN, d.mask_prob))
    for c, (one, three) in enumerate(zip(alone, mixed), start=2):
        assert list(one) == ["mlm"] and list(three) == ["tlm", "mlm", "xlco"]
        _assert_same(one["mlm"], three["mlm"])
        for j in range(8):   # int64, as tf.data's counters: fold_in's result depends on the dtype
            shard, index = tf.constant(j * SHARDS // 8, tf.int64), tf.constant(c * 2 + j % 2, tf.int64)
            key = fold(fold(tf.constant([11, 0], tf.int64), shard), index)
            language_seed, block_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            u = tf.random.stateless_uniform([], language_seed, dtype=tf.float64).numpy()
            language = min(int(np.searchsorted(np.cumsum(data.probs), u, side="right")), len(LANGUAGES) - 1)
            blocks = data.train_blocks[language][int(shard)]
            block = tf.random.stateless_uniform([], block_seed, 0, len(blocks), tf.int64).numpy()
            expected = mask_example(tf.constant(blocks[block]), fold(fold(tf.constant([11, 1], tf.int64), shard),
                                                                      index), **settings)
            for field, value in expected.items():
                np.testing.assert_array_equal(one["mlm"][field][j], value.numpy(), err_msg=f"step {c} row {j} {field}")
            assert one["mlm"]["language"][j] == language
            np.testing.assert_array_equal(one["mlm"]["language_ids"][j], np.full(SEQ_LEN, language))


def test_streams_keys_come_from_their_names(prepared, config):
    """A stream's rows do not depend on which other streams run beside it, or their batch sizes;
    another name is another stream."""
    data, _ = prepared
    tlm_alone = _take(train_batches(data, config, start_step=0, streams=[TLM]), 2)
    beside = _take(train_batches(data, config, start_step=0, streams=[StreamSpec("mlm", "blocks", 16), XLCO, TLM]), 2)
    renamed = next(train_batches(data, config, start_step=0, streams=[StreamSpec("tlm2", "tlm", 8, "reset")]))
    for a, b in zip(tlm_alone, beside):
        _assert_same(a["tlm"], b["tlm"])
    assert not np.array_equal(renamed["tlm2"]["input_ids"], tlm_alone[0]["tlm"]["input_ids"])
    mlm = next(train_batches(data, config, start_step=0, streams=[MLM]))["mlm"]
    blocks_named_otherwise = next(train_batches(data, config, start_step=0, streams=[StreamSpec("adv", "blocks", 8)]))
    assert not np.array_equal(blocks_named_otherwise["adv"]["input_ids"], mlm["input_ids"])


def _pair_candidates(data, text, shard):
    """Every pair of `shard` as (first ids, second ids, first language, second language, src first?),
    both directions, encoded from the raw text (not the pipeline's tables)."""
    out = []
    for pair in data.pairs:
        a_lang, b_lang = (data.languages.index(lang) for lang in pair)
        rows = text.parallel[pair][shard]
        encoded = data.tokenizer.encode([side for row in rows for side in row])
        for a, b in zip(encoded[::2], encoded[1::2]):
            out += [(a, b, a_lang, b_lang, True), (b, a, b_lang, a_lang, False)]
    return out


def _by_input_ids(examples):
    """{input_ids bytes: [(example, ...) with those input_ids]}, for finding a row among candidates."""
    found = {}
    for example in examples:
        found.setdefault(example[0]["input_ids"].tobytes(), []).append(example)
    return found


@pytest.mark.parametrize("positions", ["reset", "continuous"])
def test_tlm_rows_are_tlm_example_of_a_pair_of_their_shard(prepared, config, text, positions):
    data, _ = prepared
    spec = StreamSpec("tlm", "tlm", 8, positions=positions)
    layouts = [_by_input_ids((tlm_example(a, b, SEQ_LEN, data.tokenizer, positions=positions, src_lang=la,
                                          tgt_lang=lb, position_offset=config.model.position_offset), la, forward)
                             for a, b, la, lb, forward in _pair_candidates(data, text, shard))
               for shard in range(SHARDS)]
    directions = []
    for step in _take(train_batches(data, config, start_step=0, streams=[spec]), 4):
        batch = step["tlm"]
        for j, original in enumerate(_originals(batch)):
            matches = [(la, forward) for layout, la, forward in layouts[j * SHARDS // 8].get(original.tobytes(), [])
                       if np.array_equal(layout["position_ids"], batch["position_ids"][j])
                       and np.array_equal(layout["language_ids"], batch["language_ids"][j])]
            assert matches, f"row {j} is no TLM example of its shard's pairs"
            assert batch["language"][j] == matches[0][0]
            directions.append(matches[0][1])
        real = batch["masked_weights"] > 0      # masked over both sides, never a special token
        assert real.sum() > 0 and not np.isin(batch["masked_ids"][real], data.tokenizer.special_ids).any()
        second = batch["language_ids"] != batch["language_ids"][:, :1]
        assert any(second[r, batch["masked_positions"][r][real[r]]].any() for r in range(8))
    assert 0 < sum(directions) < len(directions)   # both directions


def test_pair_rows_are_xlco_pair_of_a_pair_of_their_shard(prepared, config, text):
    data, _ = prepared
    directions = []
    for step in _take(train_batches(data, config, start_step=5, streams=[XLCO]), 4):
        batch = step["xlco"]
        for j in range(4):
            matches = [forward for a, b, la, lb, forward in _pair_candidates(data, text, j * SHARDS // 4)
                       if (la, lb) == (batch["src_language"][j], batch["tgt_language"][j])
                       and all(np.array_equal(x, y) for x, y in zip(xlco_pair(a, b, SEQ_LEN, data.tokenizer),
                                                                   (batch["src_ids"][j], batch["tgt_ids"][j])))]
            assert matches, f"row {j} is no XLCo pair of its shard's pairs"
            directions.append(matches[0])
    assert 0 < sum(directions) < len(directions)


def test_tf_layouts_equal_the_numpy_examples_on_real_pairs(prepared, corpus):
    """pipeline.tlm_layout / single_layout / fair_lengths against examples.py, on every real pair."""
    data, _ = prepared
    tok = data.tokenizer
    n_a, n_b = (x.ravel() for x in np.meshgrid(np.arange(34), np.arange(34)))
    for budget in (4, 5, 28):   # elementwise over every pair of lengths
        kept = np.stack([k.numpy() for k in fair_lengths(tf.constant(n_a), tf.constant(n_b), budget, tf.where)], 1)
        np.testing.assert_array_equal(kept, [_fair_lengths(a, b, budget) for a, b in zip(n_a, n_b)])
    sides = [tf.TensorSpec([None], tf.int32)] * 2
    styles = {(positions, offset): tf.function(functools.partial(
        pipeline.tlm_layout, seq_len=SEQ_LEN, tok=tok, positions=positions, position_offset=offset, src_lang=7,
        tgt_lang=3), input_signature=sides) for positions, offset in (("continuous", 2), ("reset", 2), ("reset", 0))}
    single = tf.function(lambda x: pipeline.single_layout(x, SEQ_LEN, tok), input_signature=sides[:1])
    rows = _tsv_rows(corpus, ("en", "de"))[:40] + _tsv_rows(corpus, ("en", "sw"))
    for src, tgt in rows:
        a, b = tok.encode([src, tgt])
        for x, y in ((a, b), (b, a)):
            for (positions, offset), layout in styles.items():
                got = layout(tf.constant(x, tf.int32), tf.constant(y, tf.int32))
                want = tlm_example(x, y, SEQ_LEN, tok, positions=positions, src_lang=7, tgt_lang=3,
                                   position_offset=offset)
                for key in want:
                    np.testing.assert_array_equal(got[key].numpy(), want[key], err_msg=f"{positions} {key}")
            np.testing.assert_array_equal(single(tf.constant(x, tf.int32)).numpy(), xlco_pair(x, y, SEQ_LEN, tok)[0])


def test_pair_mixture_follows_the_pair_q_and_directions_are_fair(prepared, config):
    data, _ = prepared
    spec = StreamSpec("xlco", "pairs", 16)
    batches = [b["xlco"] for b in _take(train_batches(data, config, start_step=0, streams=[spec]), 100)]
    src = np.concatenate([b["src_language"] for b in batches])
    tgt = np.concatenate([b["tgt_language"] for b in batches])
    n, en = len(src), LANGUAGES.index("en")
    other = np.where(src == en, tgt, src)     # the pair's non-English side
    for (_, lang), q in zip(data.pairs, data.pair_probs):
        share = np.mean(other == LANGUAGES.index(lang))
        assert abs(share - q) < 5 * np.sqrt(q * (1 - q) / n), (lang, share, q)
    assert abs(np.mean(src == en) - 0.5) < 5 * np.sqrt(0.25 / n)


# --- schedules, resume, process counts -----------------------------------------------------------


@pytest.mark.parametrize("schedule", ["sum", "alternate"])
def test_every_stream_resumes_exactly(prepared, config, schedule):
    data, _ = prepared
    streams = [MLM, TLM, XLCO]
    uninterrupted = _take(train_batches(data, config, start_step=0, streams=streams, schedule=schedule), 7)
    resumed = _take(train_batches(data, config, start_step=4, streams=streams, schedule=schedule), 3)
    for a, b in zip(uninterrupted[4:], resumed):
        _assert_same(a, b)
    assert not np.array_equal(uninterrupted[0]["mlm"]["input_ids"], uninterrupted[3]["mlm"]["input_ids"])


def test_alternate_yields_one_stream_a_step_with_the_rows_sum_gives_it(prepared, config):
    data, _ = prepared
    streams = [MLM, TLM, XLCO]
    every = _take(train_batches(data, config, start_step=1, streams=streams), 6)
    one_each = _take(train_batches(data, config, start_step=1, streams=streams, schedule="alternate"), 6)
    for counter, (summed, alternated) in enumerate(zip(every, one_each), start=1):
        name = streams[counter % 3].name
        assert list(alternated) == [name]
        _assert_same(alternated[name], summed[name])


def test_global_batches_of_every_stream_do_not_depend_on_the_process_count(prepared, config, tmp_path):
    one, _ = prepared
    streams = [MLM, TLM, XLCO]
    whole = _take(train_batches(one, config, start_step=1, streams=streams), 2)
    for count in (2, 4):
        workdir = str(tmp_path / f"p{count}")
        parts = run_processes(count, lambda p, workdir=workdir: prepare_data(config, workdir, lambda _: None,
                                                                             processes=p, pairs=True))
        for part in parts:
            assert (part.pairs, part.pair_counts, part.pair_probs) == (one.pairs, one.pair_counts, one.pair_probs)
        steps = [_take(train_batches(part, config, start_step=1, streams=streams), 2) for part in parts]
        for c, batch in enumerate(whole):
            for name, fields in batch.items():
                for key, value in fields.items():
                    np.testing.assert_array_equal(value, np.concatenate([s[c][name][key] for s in steps]),
                                                  err_msg=f"{count} processes, step {c}, {name}.{key}")


# --- the built-in corpus --------------------------------------------------------------------------


def test_the_gettext_corpus_gives_its_english_pairs(tmp_path):
    """No corpus set: the machine's gettext catalogs, whose en-xx translations are the pairs."""
    c = default_config()
    c.data.seq_len, c.data.shards, c.data.max_sentences_per_language = SEQ_LEN, SHARDS, 40
    c.data.tokenizer, c.model.vocab_size, c.train.batch_size = "bytes", 261, 8
    c.data.eval_sentences_per_language = 0
    config = validate(c)
    if not any(glob.glob(f"{d}/*/LC_MESSAGES/*.mo") for d in DEFAULT_LOCALE_DIRS):
        pytest.skip("this machine has no gettext catalogs under " + ", ".join(DEFAULT_LOCALE_DIRS))
    text = read_text(config, log=lambda _: None, pairs=True)
    logs = []
    data = prepare_data(config, str(tmp_path), log=logs.append, text=text, pairs=True)
    # shard s keeps pairs s, s + 4, ... of each, 10 of them at most (its share of the cap of 40)
    expected = {pair: sum(min(len(rows[s::SHARDS]), 10) for s in range(SHARDS))
                for pair, rows in text.plan.gettext.parallel.items() if rows}
    assert data.pairs == sorted(expected) and data.pair_counts == expected
    assert all(pair[0] == "en" for pair in data.pairs) and "language-pair sampling" in "\n".join(logs)
    batch = next(train_batches(data, config, start_step=0, streams=[StreamSpec("tlm", "tlm", 8)]))["tlm"]
    layouts = [_by_input_ids((tlm_example(a, b, SEQ_LEN, data.tokenizer, src_lang=la, tgt_lang=lb),)
                             for a, b, la, lb, _ in _pair_candidates(data, text, shard)) for shard in range(SHARDS)]
    for j, original in enumerate(_originals(batch)):
        assert original.tobytes() in layouts[j * SHARDS // 8], f"row {j} is no TLM example of its shard's pairs"


def test_a_prepared_corpus_gives_its_pair_splits(corpus, config, text, tmp_path):
    """data.prepared_corpus (TFDS records of the same files): the <src>-<tgt> splits are the pairs."""
    from xlm_jax.data.tfds_builder import prepare_local_corpus

    prepared = config.copy_and_resolve_references()
    prepared.data.corpus_dir = ""
    prepared.data.prepared_corpus = prepare_local_corpus(str(corpus), str(tmp_path / "tfds"), name="streams")
    records = read_text(prepared, log=lambda _: None, pairs=True)
    assert records.pairs == text.pairs and records.replicated_pairs == text.replicated_pairs
    np.testing.assert_array_equal(records.pair_sentences.sum(1), text.pair_sentences.sum(1))
    for pair in records.pairs:
        shards = records.parallel[pair][:1] if pair in records.replicated_pairs else records.parallel[pair]
        assert [row for rows in shards for row in rows] == _tsv_rows(corpus, pair)
