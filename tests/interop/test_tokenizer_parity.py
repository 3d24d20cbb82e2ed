"""Our tokenizers give transformers' ids for the same files, on real text in many scripts.

SentencePiece (XLM-R layout) is checked against XLMRobertaTokenizer (slow, the reference) and
the fast tokenizer AutoTokenizer builds; WordPiece against BertTokenizer and BertTokenizerFast,
on vocab.txt files trained by the `tokenizers` library (an independent implementation).
Known divergence: BertTokenizerFast does not NFC-normalize, the slow tokenizer (and ours) does,
so on decomposed (NFD) input a cased vocabulary gives different ids in the fast one.
"""
import unicodedata
import warnings

import numpy as np
import pytest

from xlm_jax.data.tokenizers import (SentencePieceTokenizer, load_tokenizer, save_tokenizer,
                                     tokenizer_from_hf_directory, train_sentencepiece, write_hf_tokenizer_files)
from xlm_jax.data.wordpiece import WordPieceTokenizer
from xlm_jax.errors import CheckpointError, DataError

transformers = pytest.importorskip("transformers")

MONO = ("bn", "cy", "el", "en", "hy", "ja", "mr", "sw", "tt", "uk", "vi", "yo", "zu")
TATOEBA = ("jpn", "cmn", "ara", "tha", "kor", "vie", "heb", "hin", "rus", "amh")
XNLI = ("zh", "th", "ar", "hi", "ur")
EDGES = [
    "", "   ", "tab\there\nnewline\r\ncarriage", "ctrl\x00\x01\x07\x7f\x85chars\ufffd",
    "soft\u00adhyphen zero\u200bwidth j\u200doin", "no\u00a0break\u3000ideographic\u2028line\u2029para",
    "ΟΔΟΣ ΟΔΟΣ. Σ σ ς", "İstanbul ǅ ß ẞ ﬁ", "cafe\u0301 Tiê\u0301ng Viê\u0323t",
    "e\u0301 \u0301alone",
    "日本語のテキスト，漢字。𠀀𪜀 \uf900\ufa0e 한국어", "[MASK] [CLS]x[SEP]y [mask] [PAD][UNK]",
    "$100^2 `code` ~tilde~ {a|b} <tag> @user #hash", "«guillemets» „quotes“ — dash… ¿qué? ¡sí! ،؛؟ ।॥ ։",
    "😀👍🏽 ☃ ᐊᐃᐅ ꙮ", "x" * 99 + " " + "y" * 100 + " " + "z" * 101 + " " + "w" * 150 + "!",
    "Ṣé o ti jẹun? Ọjọ́ àìkú", "<mask> and <s> </s> in text",
    "a  <mask>b<s></s><pad>x<unk> <mask>",
]


def _lines(path, count, column=None):
    lines = path.read_text(encoding="utf-8").split("\n")
    if column is not None:
        lines = [line.split("\t")[column] for line in lines[1:] if line.count("\t") >= column]
    return [line for line in lines if line][:count]


@pytest.fixture(scope="module")
def texts(shared_data):
    """(training text per mono language, evaluation lines from all sources)."""
    train = {lang: _lines(shared_data / "mono" / f"{lang}.txt", 400) for lang in MONO}
    lines = [s for lang in MONO for s in _lines(shared_data / "mono" / f"{lang}.txt", 3000)[-150:]]
    for lang in TATOEBA:
        lines += _lines(shared_data / "tatoeba" / f"tatoeba.{lang}-eng.{lang}", 60)
    for lang in XNLI:
        lines += _lines(shared_data / "xnli" / f"xnli_validation_{lang}.tsv", 60, column=1)
    return train, lines + EDGES


def _ours(tokenizer, lines):
    return [[tokenizer.bos_id, *ids.tolist(), tokenizer.eos_id] for ids in tokenizer.encode(lines)]


def _mismatches(ours, theirs, lines):
    return [(lines[i], ours[i], theirs[i]) for i in range(len(lines)) if ours[i] != theirs[i]]


# --- SentencePiece / XLM-R -------------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["no_byte_fallback", "byte_fallback"])
def xlmr_dir(request, texts, tmp_path_factory):
    train, _ = texts
    tokenizer = train_sentencepiece(train, {lang: 1 / len(MONO) for lang in MONO}, 4000,
                                    input_sentence_size=3000, character_coverage=0.9995,
                                    byte_fallback=request.param, seed=0)
    directory = tmp_path_factory.mktemp("xlmr")
    write_hf_tokenizer_files(tokenizer, directory, model_max_length=512)
    return tokenizer, directory


def test_xlmr_ids_equal_transformers_slow_and_fast(xlmr_dir, texts):
    tokenizer, directory = xlmr_dir
    lines = texts[1]
    ours = _ours(tokenizer, lines)
    slow = transformers.XLMRobertaTokenizer.from_pretrained(directory)
    fast = transformers.AutoTokenizer.from_pretrained(directory)
    assert isinstance(fast, transformers.XLMRobertaTokenizerFast)
    assert _mismatches(ours, slow(lines)["input_ids"], lines) == []
    assert _mismatches(ours, fast(lines)["input_ids"], lines) == []
    if tokenizer.byte_fallback:     # the point of byte fallback: no <unk> for unseen characters
        assert tokenizer.unk_id not in np.concatenate([ids for ids, line in zip(ours, lines) if "<unk>" not in line])


def test_xlmr_special_layout(xlmr_dir):
    tokenizer, directory = xlmr_dir
    slow = transformers.XLMRobertaTokenizer.from_pretrained(directory)
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert slow.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert tokenizer.vocab_size == len(slow) == 4000
    assert tokenizer.mask_id == slow.mask_token_id == tokenizer.vocab_size - 1
    assert slow.model_max_length == 512


def test_xlmr_round_trip_through_the_directory(xlmr_dir, texts):
    tokenizer, directory = xlmr_dir
    again = tokenizer_from_hf_directory(directory)
    assert isinstance(again, SentencePieceTokenizer) and again.model_proto == tokenizer.model_proto
    assert (directory / "tokenizer.json").exists() == tokenizer.byte_fallback


# --- WordPiece / mBERT -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["cased", "uncased"])
def bert_dir(request, texts, tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    lower = request.param
    trainer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trainer.normalizer = normalizers.BertNormalizer(lowercase=lower)
    trainer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer.train_from_iterator([s for lines in texts[0].values() for s in lines], trainers.WordPieceTrainer(
        vocab_size=6000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    directory = tmp_path_factory.mktemp("bert")
    vocab = [token for token, _ in sorted(trainer.get_vocab().items(), key=lambda item: item[1])]
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(f'{{"do_lower_case": {str(lower).lower()}}}')
    return lower, directory


def test_wordpiece_ids_equal_transformers_slow_and_fast(bert_dir, texts):
    lower, directory = bert_dir
    lines = texts[1]
    tokenizer = tokenizer_from_hf_directory(directory)
    assert isinstance(tokenizer, WordPieceTokenizer) and tokenizer.do_lower_case == lower
    ours = _ours(tokenizer, lines)
    slow = transformers.BertTokenizer.from_pretrained(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = transformers.BertTokenizerFast.from_pretrained(directory)
    assert _mismatches(ours, slow(lines)["input_ids"], lines) == []
    fast_only = _mismatches(ours, fast(lines)["input_ids"], lines)
    # Only decomposed input in a cased vocabulary: the fast tokenizer skips the slow one's NFC.
    assert [line for line, *_ in fast_only if lower or unicodedata.is_normalized("NFC", line)] == []
    assert len(fast_only) < 0.05 * len(lines)
    assert tokenizer.unk_id in np.concatenate(ours)          # the over-long words at least


def test_wordpiece_round_trip_through_export(bert_dir, texts, tmp_path):
    lower, directory = bert_dir
    tokenizer = tokenizer_from_hf_directory(directory)
    write_hf_tokenizer_files(tokenizer, tmp_path / "export")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "export", use_fast=False)
    assert isinstance(auto, transformers.BertTokenizer) and auto.do_lower_case == lower
    lines = texts[1][::4] + EDGES
    assert _mismatches(_ours(tokenizer, lines), auto(lines)["input_ids"], lines) == []
    assert (auto.cls_token_id, auto.sep_token_id, auto.pad_token_id, auto.mask_token_id) == (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id)
    save_tokenizer(tokenizer, tmp_path / "run")
    assert _ours(load_tokenizer(tmp_path / "run"), lines) == _ours(tokenizer, lines)


def test_strip_accents_option_is_read_and_written(bert_dir, tmp_path):
    _, directory = bert_dir
    vocab = (directory / "vocab.txt").read_text(encoding="utf-8")
    (tmp_path / "vocab.txt").write_text(vocab, encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(
        '{"do_lower_case": false, "strip_accents": true, "tokenize_chinese_chars": false}')
    tokenizer = tokenizer_from_hf_directory(tmp_path)
    assert tokenizer.options == dict(do_lower_case=False, strip_accents=True, tokenize_chinese_chars=False)
    lines = ["Tiếng Việt Ọjọ́ Café", "日本語のテキスト"]
    slow = transformers.BertTokenizer.from_pretrained(tmp_path)
    assert _ours(tokenizer, lines) == slow(lines)["input_ids"]
    write_hf_tokenizer_files(tokenizer, tmp_path / "export")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert auto(lines)["input_ids"] == _ours(tokenizer, lines)


# --- errors ----------------------------------------------------------------------------------

def test_a_directory_without_tokenizer_files_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"neither sentencepiece\.bpe\.model .* nor vocab\.txt"):
        tokenizer_from_hf_directory(tmp_path)


def test_damaged_tokenizer_files_are_named(tmp_path):
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="sentencepiece.bpe.model"):
        tokenizer_from_hf_directory(tmp_path)
    (tmp_path / "sentencepiece.bpe.model").unlink()
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"vocab\.txt.*lacks the special tokens \[CLS\], \[SEP\], \[MASK\]"):
        tokenizer_from_hf_directory(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(DataError, match="tokenizer_config.json is not valid JSON"):
        tokenizer_from_hf_directory(tmp_path)
