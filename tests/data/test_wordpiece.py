"""BERT's WordPiece on a hand-made vocabulary: every expected id sequence is worked out by hand."""
import json

import numpy as np
import pytest

from xlm_jax.data.tokenizers import (SENTENCEPIECE_FILE, WORDPIECE_FILE, load_tokenizer, save_tokenizer,
                                     tokenizer_exists, tokenizer_path)
from xlm_jax.data.wordpiece import WordPieceTokenizer
from xlm_jax.errors import DataError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",             # 0-4
         "un", "##aff", "##able", "hello", "world", "##s", ",", "!",  # 5-12
         "a", "##b", "cafe", "οδοσ", "中", "文", "[", "]", "mask",     # 13-21
         "$", "x", "##x", "Café", "ab"]                               # 22-26
ID = {token: i for i, token in enumerate(VOCAB)}


def ids(text, **options):
    return WordPieceTokenizer(VOCAB, **options).encode([text])[0].tolist()


def names(*tokens):
    return [ID[t] for t in tokens]


def test_specials_come_from_the_vocabulary():
    t = WordPieceTokenizer(VOCAB)
    assert (t.bos_id, t.eos_id, t.pad_id, t.unk_id, t.mask_id) == (2, 3, 0, 1, 4)
    assert t.vocab_size == len(VOCAB) and t.special_ids == (2, 0, 3, 1, 4)
    assert t.id_to_piece(6) == "##aff"


def test_greedy_longest_match_with_continuations():
    assert ids("unaffable") == names("un", "##aff", "##able")
    assert ids("worlds") == names("world", "##s")
    assert ids("ab") == names("ab")                      # longest first: not a ##b
    assert ids("abb") == names("ab", "##b")


def test_a_piece_without_a_full_cut_is_one_unk():
    assert ids("unbelievable hello") == names("[UNK]", "hello")   # un ##b, then no ##e...: all [UNK]


def test_punctuation_is_split_off_including_ascii_symbols():
    assert ids("hello, world!") == names("hello", ",", "world", "!")
    assert ids("hello,world!!") == names("hello", ",", "world", "!", "!")
    assert ids("$x") == names("$", "x")                  # $ is not Unicode P*, but ASCII: split
    assert ids("x«x") == names("x", "[UNK]", "x")        # « (Pi) is split, and not in the vocabulary


def test_words_over_100_characters_are_unk():
    assert ids("x" * 100) == names("x", *["##x"] * 99)
    assert ids("x" * 101) == names("[UNK]")
    assert ids("x" * 101 + "!") == names("[UNK]", "!")   # the limit is per piece, after punctuation


def test_lowercasing_strips_accents_and_never_writes_final_sigma():
    assert ids("Café HELLO") == names("cafe", "hello")
    assert ids("ΟΔΟΣ") == names("οδοσ")                  # σ, as transformers: per-character lowercase
    assert ids("CAFE\u0301") == names("cafe")             # decomposed accent: stripped too


def test_cased_keeps_case_and_accents_unless_asked():
    assert ids("Café", do_lower_case=False) == names("Café")
    assert ids("Cafe\u0301", do_lower_case=False) == names("Café")        # NFC first
    assert ids("café", do_lower_case=False) == names("[UNK]")
    assert ids("café", do_lower_case=False, strip_accents=True) == names("cafe")
    assert ids("Café", strip_accents=False) == names("[UNK]")             # lowercased "café" kept accented


def test_cjk_ideographs_are_words_of_their_own():
    assert ids("中文hello") == names("中", "文", "hello")
    assert ids("中文", tokenize_chinese_chars=False) == names("[UNK]")     # 中 then no ##文


def test_control_characters_are_dropped_and_whitespace_normalized():
    assert ids("a\x00b\x07 \ufffdhello\u00adworld") == names("ab", "[UNK]")   # "helloworld": no ##world
    assert ids("hello\u3000world\u00a0!\tx\n") == names("hello", "world", "!", "x")
    assert ids("") == [] and ids(" \x00\t ") == []


def test_special_tokens_in_the_text_are_kept_whole():
    assert ids("[MASK] hello[SEP]x") == names("[MASK]", "hello", "[SEP]", "x")
    assert ids("[mask]") == names("[", "mask", "]")       # only the exact spelling is special


def test_decode_joins_continuations_and_drops_specials():
    t = WordPieceTokenizer(VOCAB)
    assert t.decode(names("[CLS]", "un", "##aff", "##able", ",", "hello", "[SEP]", "[PAD]")) == "unaffable , hello"
    with pytest.raises(DataError, match="outside this tokenizer's vocabulary of 27"):
        t.decode([27])


def test_encode_returns_int32_arrays_per_text():
    out = WordPieceTokenizer(VOCAB).encode(["hello world", ""])
    assert [a.dtype for a in out] == [np.int32, np.int32] and [len(a) for a in out] == [2, 0]


def test_a_vocabulary_needs_its_specials_once():
    with pytest.raises(DataError, match=r"lacks the special tokens \[MASK\]"):
        WordPieceTokenizer(VOCAB[:4] + VOCAB[5:])
    with pytest.raises(DataError, match=r"'hello' twice \(ids 8 and 27\)"):
        WordPieceTokenizer(VOCAB + ["hello"])


def test_vocab_file_is_read_like_transformers(tmp_path):
    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t in VOCAB), encoding="utf-8")
    t = WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt", do_lower_case=False)
    assert t.vocab == VOCAB and not t.do_lower_case
    with pytest.raises(DataError, match="missing.txt does not exist"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "missing.txt")


# --- the run directory's tokenizer file -------------------------------------------------------

def test_save_and_load_a_wordpiece_tokenizer(tmp_path):
    t = WordPieceTokenizer(VOCAB, do_lower_case=False, strip_accents=True, tokenize_chinese_chars=False)
    assert not tokenizer_exists(tmp_path) and tokenizer_path(tmp_path) is None
    assert save_tokenizer(t, tmp_path / "run") == tmp_path / "run" / WORDPIECE_FILE
    assert [p.name for p in (tmp_path / "run").iterdir()] == [WORDPIECE_FILE]     # no temp file left
    loaded = load_tokenizer(tmp_path / "run")
    assert isinstance(loaded, WordPieceTokenizer) and loaded.vocab == VOCAB and loaded.options == t.options
    assert tokenizer_exists(tmp_path / "run") and tokenizer_path(tmp_path / "run").name == WORDPIECE_FILE


def test_loading_names_the_missing_or_damaged_file(tmp_path):
    with pytest.raises(DataError, match=f"no tokenizer in .*{SENTENCEPIECE_FILE}.*{WORDPIECE_FILE}"):
        load_tokenizer(tmp_path)
    (tmp_path / WORDPIECE_FILE).write_text("{not json")
    with pytest.raises(DataError, match=f"{WORDPIECE_FILE} is not an xlm_jax WordPiece tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / WORDPIECE_FILE).write_text(json.dumps({"format": "xlm_jax.wordpiece/1", "vocab": ["a"]}))
    with pytest.raises(DataError, match=f"{WORDPIECE_FILE} is not an xlm_jax WordPiece tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / SENTENCEPIECE_FILE).write_bytes(b"")
    with pytest.raises(DataError, match="holds two tokenizers"):
        load_tokenizer(tmp_path)


def test_a_run_keeps_one_tokenizer(tmp_path):
    (tmp_path / SENTENCEPIECE_FILE).write_bytes(b"")
    with pytest.raises(DataError, match=f"{SENTENCEPIECE_FILE} already holds this run's tokenizer"):
        save_tokenizer(WordPieceTokenizer(VOCAB), tmp_path)
