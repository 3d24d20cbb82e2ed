"""prepare_data on real text, then the batch streams: shapes, determinism, resume, mixture.

Several processes: tests/data/test_shard_invariance.py (threads) and tests/train/test_loop.py.
"""
import os

import numpy as np
import pytest

from tests.helpers import objective_streams
from xlm_jax.config import default_config
from xlm_jax.data import prepare
from xlm_jax.data.masking import max_predictions
from xlm_jax.data.pipeline import eval_batches, train_batches
from xlm_jax.data.prepare import prepare_data
from xlm_jax.data.streams import StreamSpec, batch_spec
from xlm_jax.data.sampling import temperature_probs
from xlm_jax.data.text import read_text
from xlm_jax.errors import ConfigError

SIZES = {"en": 800, "el": 400, "hy": 200, "sw": 100, "yo": 8}   # yo: replicated, too small to hold out text
BATCH, SEQ_LEN, SHARDS = 16, 32, 4


@pytest.fixture(scope="module")
def config(shared_data, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    for lang, size in SIZES.items():
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:size]
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = default_config()
    c.data.corpus_dir = str(corpus)
    c.data.seq_len = SEQ_LEN
    c.data.shards = SHARDS
    c.data.alpha = 0.5
    c.data.eval_sentences_per_language = 30
    c.data.tokenizer_sentences = 3000
    c.data.byte_fallback = False
    c.model.vocab_size = 500
    c.train.batch_size = BATCH
    c.train.seed = 3
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def prepared(config, workdir):
    logs = []
    return prepare_data(config, workdir, log=logs.append), logs


def _take(iterator, n):
    """The next n steps' MLM batches (train_batches yields {stream name: batch}; MLM alone by default)."""
    return [next(iterator)["mlm"] for _ in range(n)]


def _originals(batch):
    """The uncorrupted blocks: masked_ids put back at masked_positions."""
    tokens = batch["input_ids"].copy()
    for row, positions, ids, weights in zip(tokens, batch["masked_positions"], batch["masked_ids"],
                                            batch["masked_weights"]):
        real = weights > 0
        row[positions[real]] = ids[real]
    return tokens


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_prepare_data(prepared, config, workdir):
    data, logs = prepared
    assert data.languages == sorted(SIZES) and data.replicated == ["yo"] and data.shards == range(SHARDS)
    text = read_text(config, log=lambda _: None)
    for lang, n in SIZES.items():   # a sharded language holds out ceil(30 / 4) = 8 a shard, at most a tenth
        per_shard = text.sentences[text.languages.index(lang)]
        assert per_shard.sum() == n
        held_out = min(30, n // 10) if lang == "yo" else np.minimum(8, per_shard // 10).sum()
        assert data.counts[lang] == n - held_out
    probs = temperature_probs(data.counts, 0.5)
    assert data.probs == pytest.approx([probs[lang] for lang in data.languages])
    assert data.tokenizer.vocab_size == 500
    for lang, shards in zip(data.languages, data.train_blocks):
        assert len(shards) == SHARDS and (lang != "yo" or all(b is shards[0] for b in shards))
        for blocks in shards:
            assert blocks.dtype == np.int32 and blocks.shape[1] == SEQ_LEN and len(blocks) > 0
            assert np.all(blocks[:, 0] == 0) and blocks.max() < 500
    assert data.evaluated == ["el", "en", "hy", "sw"] and len(data.eval_blocks[data.languages.index("yo")][0]) == 0
    assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
    log = "\n".join(logs)
    assert "q_i" in log and "not evaluated" in log and "yo" in log.split("not evaluated")[1]
    assert "replicated (fewer than 10 sentences in some shard" in log and "over 4 shards" in log


def test_batch_shapes_and_dtypes(prepared, config):
    data, _ = prepared
    step = next(train_batches(data, config, start_step=0, streams=objective_streams(config)))
    assert list(step) == ["mlm"]
    predictions = max_predictions(SEQ_LEN, 0.15)
    expected = {"input_ids": ((BATCH, SEQ_LEN), np.int32), "masked_positions": ((BATCH, predictions), np.int32),
                "masked_ids": ((BATCH, predictions), np.int32),
                "masked_weights": ((BATCH, predictions), np.float32), "language": ((BATCH,), np.int32)}
    assert {k: (v.shape, v.dtype) for k, v in step["mlm"].items()} == expected
    assert batch_spec([StreamSpec("mlm", "blocks", BATCH)], config) == {"mlm": expected}


def test_examples_are_blocks_of_their_language_from_their_shard(prepared, config):
    data, _ = prepared
    for batch in _take(train_batches(data, config, start_step=0, streams=objective_streams(config)), 3):
        for row, (original, language) in enumerate(zip(_originals(batch), batch["language"])):
            shard = row * SHARDS // BATCH
            assert (data.train_blocks[language][shard] == original).all(axis=1).any()


def test_two_iterators_agree(prepared, config):
    data, _ = prepared
    for a, b in zip(_take(train_batches(data, config, start_step=0, streams=objective_streams(config)), 4),
                    _take(train_batches(data, config, start_step=0, streams=objective_streams(config)), 4)):
        _assert_same(a, b)


def test_resume_gives_the_same_batches(prepared, config):
    data, _ = prepared
    uninterrupted = _take(train_batches(data, config, start_step=0, streams=objective_streams(config)), 8)
    resumed = _take(train_batches(data, config, start_step=3, streams=objective_streams(config)), 5)
    for a, b in zip(uninterrupted[3:], resumed):
        _assert_same(a, b)
    assert not np.array_equal(uninterrupted[0]["input_ids"], uninterrupted[1]["input_ids"])


def test_language_mixture_follows_q(prepared, config):
    data, _ = prepared
    batches = train_batches(data, config, start_step=0, streams=objective_streams(config))
    languages = np.concatenate([b["language"] for b in _take(batches, 250)])
    frequencies = np.bincount(languages, minlength=len(data.languages)) / len(languages)
    q = np.array(data.probs)
    assert np.all(np.abs(frequencies - q) < 5 * np.sqrt(q * (1 - q) / len(languages)))


def test_eval_batches_are_fixed(prepared, config):
    data, _ = prepared
    index = data.languages.index("el")
    first, second = eval_batches(data, config, index), eval_batches(data, config, index)
    assert len(first) == config.data.eval_batches
    for a, b in zip(first, second):
        _assert_same(a, b)
        assert np.all(a["language"] == index)
    rows = BATCH // SHARDS   # row j of eval batch b: held-out block b * rows + j % rows of shard j // rows
    for b, batch in enumerate(first):
        for j, original in enumerate(_originals(batch)):
            blocks = data.eval_blocks[index][j // rows]
            np.testing.assert_array_equal(original, blocks[(b * rows + j % rows) % len(blocks)])
    assert eval_batches(data, config, data.languages.index("yo")) == []


def test_tokenizer_is_reused_from_the_workdir(prepared, config, workdir, monkeypatch):
    data, _ = prepared
    path = os.path.join(workdir, "tokenizer.model")
    mtime = os.stat(path).st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was retrained")

    monkeypatch.setattr(prepare, "train_sentencepiece", no_training)
    logs = []
    again = prepare_data(config, workdir, log=logs.append)
    assert again.tokenizer.model_proto == data.tokenizer.model_proto
    assert os.stat(path).st_mtime_ns == mtime
    assert any("loaded" in line for line in logs)
    for a, b in zip(again.train_blocks, data.train_blocks):
        for shard_a, shard_b in zip(a, b):
            np.testing.assert_array_equal(shard_a, shard_b)


def test_vocab_size_must_match_the_saved_tokenizer(config, workdir, prepared):
    other = config.copy_and_resolve_references()
    other.model.vocab_size = 600
    with pytest.raises(ConfigError, match=r"model.vocab_size.*tokenizer.model has 500 ids"):
        prepare_data(other, workdir, log=lambda line: None)


def test_a_wordpiece_tokenizer_in_the_workdir_packs_bert_blocks(config, tmp_path):
    """Continued pretraining of an mBERT: [CLS] s1 [SEP] s2 [SEP] ... blocks, [PAD]=0, [MASK] masks."""
    from xlm_jax.data.tokenizers import save_tokenizer
    from xlm_jax.data.wordpiece import WordPieceTokenizer

    letters = sorted({c for lang in SIZES for c in open(os.path.join(config.data.corpus_dir, f"{lang}.txt"),
                                                         encoding="utf-8").read().lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    save_tokenizer(WordPieceTokenizer(vocab), tmp_path)
    bert = config.copy_and_resolve_references()
    bert.model.vocab_size = len(vocab)
    data = prepare_data(bert, str(tmp_path), log=lambda line: None)
    assert isinstance(data.tokenizer, WordPieceTokenizer) and not (tmp_path / "tokenizer.model").exists()
    blocks = np.concatenate([b for shards in data.train_blocks for b in shards])
    assert np.all(blocks[:, 0] == 2) and np.sum(blocks == 3) > 0 and blocks[-1, -1] == 0
    assert not np.isin(blocks[:, 1:], [2, 4]).any()
    batch = next(train_batches(data, bert, start_step=0, streams=objective_streams(bert)))["mlm"]
    masked = batch["masked_positions"][batch["masked_weights"] > 0]
    assert np.sum(batch["input_ids"] == 4) > 0 and masked.min() > 0
    assert not np.isin(batch["masked_ids"][batch["masked_weights"] > 0], [0, 1, 2, 3, 4]).any()


def test_line_packing_keeps_every_block_within_one_line(config, tmp_path, prepared):
    """data.packing="lines": each block is <s>, then the tokens of one line (and its </s>) or of
    the next part of it, then padding; the same lines as the stream packing, cut differently."""
    data, _ = prepared
    lines = config.copy_and_resolve_references()
    lines.data.packing = "lines"
    from xlm_jax.data.tokenizers import save_tokenizer
    save_tokenizer(data.tokenizer, tmp_path)
    by_line = prepare_data(lines, str(tmp_path), log=lambda line: None)
    tok = by_line.tokenizer
    for stream_shards, line_shards in zip(data.train_blocks, by_line.train_blocks):
        for stream, blocks in zip(stream_shards, line_shards):
            body = blocks[:, 1:]
            is_eos, is_pad = body == tok.eos_id, body == tok.pad_id
            assert np.all(blocks[:, 0] == tok.bos_id) and np.all(is_eos.sum(1) <= 1)
            # after a </s> only padding; padding only after a </s> (a line's last block)
            after_eos = np.cumsum(is_eos, axis=1) - is_eos > 0
            assert np.array_equal(after_eos, is_pad & (np.cumsum(is_eos, axis=1) > 0))
            assert not (is_pad & ~after_eos).any()
            # the same text: non-padding tokens in the same order as the stream packing's
            np.testing.assert_array_equal(body[~is_pad], stream[:, 1:][stream[:, 1:] != tok.pad_id])
    assert sum(len(b) for s in by_line.train_blocks for b in s) > sum(len(b) for s in data.train_blocks for b in s)
    batch = next(train_batches(by_line, lines, start_step=0, streams=objective_streams(lines)))["mlm"]
    assert batch["input_ids"].shape == (BATCH, SEQ_LEN)
