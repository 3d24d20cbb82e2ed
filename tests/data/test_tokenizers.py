"""SentencePiece with the fairseq id layout, trained on real text in four scripts."""
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm

from xlm_jax.data.sampling import temperature_probs
from xlm_jax.data.tokenizers import (SentencePieceTokenizer, load_tokenizer, save_tokenizer, tokenizer_path,
                                     train_sentencepiece)
from xlm_jax.errors import DataError

LANGUAGES = ("en", "el", "ja", "hy")


@pytest.fixture(scope="module")
def text(shared_data):
    return {lang: (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:2000]
            for lang in LANGUAGES}


def _train(text, vocab_size=2000, **overrides):
    settings = dict(input_sentence_size=3000, character_coverage=0.9995, byte_fallback=True, seed=0)
    probs = temperature_probs({lang: len(s) for lang, s in text.items()}, 0.3)
    return train_sentencepiece(text, probs, vocab_size, **{**settings, **overrides})


@pytest.fixture(scope="module")
def tokenizer(text):
    return _train(text)


def test_fairseq_special_ids(tokenizer):
    assert tokenizer.vocab_size == 2000
    assert tokenizer.mask_id == 1999
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.special_ids == (0, 1, 2, 3, 1999)
    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    assert sp.vocab_size() == 1998
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]


def test_ids_are_sentencepiece_ids_shifted_by_one(tokenizer, text):
    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    sentences = [s for lang in LANGUAGES for s in text[lang][:50]]
    for ids, pieces in zip(tokenizer.encode(sentences), sp.encode(sentences)):
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, np.array(pieces) + 1)
        assert ids.min() >= 4 and ids.max() < tokenizer.mask_id


def test_unknown_characters_map_to_fairseq_unk(text):
    tokenizer = _train({lang: text[lang][:300] for lang in ("en", "el")}, vocab_size=300, byte_fallback=False,
                       input_sentence_size=1000)
    ids = tokenizer.encode(["hello ᐊᐃᐅ"])[0]    # Canadian syllabics: not in the training text
    assert tokenizer.unk_id in ids.tolist()
    assert tokenizer.decode(ids).strip() == "hello"       # <unk> is a special: dropped


def test_decode_inverts_encode_up_to_normalization(tokenizer, text):
    sentences = [s for lang in LANGUAGES for s in text[lang][-30:]]
    sentences.append("ᐊᐃᐅ and ☃ come back through byte fallback")
    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    for sentence, ids in zip(sentences, tokenizer.encode(sentences)):
        assert tokenizer.decode(ids) == sp.decode(sp.encode(sentence))
        if unicodedata.normalize("NFKC", sentence) == sentence and " ".join(sentence.split()) == sentence:
            assert tokenizer.decode(ids) == sentence


def test_decode_skips_specials(tokenizer):
    ids = tokenizer.encode(["Καλημέρα"])[0]
    with_specials = [tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.mask_id, tokenizer.pad_id]
    assert tokenizer.decode(with_specials) == "Καλημέρα"
    with pytest.raises(DataError, match="outside this tokenizer's vocabulary of 2000"):
        tokenizer.decode([5, 2000])


def test_save_and_load(tokenizer, tmp_path, text):
    path = tmp_path / "tokenizer.model"
    tokenizer.save(str(path))
    loaded = SentencePieceTokenizer.load(str(path))
    assert loaded.model_proto == tokenizer.model_proto and loaded.vocab_size == tokenizer.vocab_size
    sentences = text["hy"][:20]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.encode(sentences), tokenizer.encode(sentences)))
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.model"]


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        SentencePieceTokenizer.load(str(tmp_path / "missing.model"))
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00\x01 definitely not a protobuf \xff" * 10)
    with pytest.raises(DataError, match=r"garbage\.model: not a serialized SentencePiece model"):
        SentencePieceTokenizer.load(str(garbage))


def test_run_directory_file(tokenizer, tmp_path):
    assert save_tokenizer(tokenizer, tmp_path / "run") == tmp_path / "run" / "tokenizer.model"
    assert tokenizer_path(tmp_path / "run") == tmp_path / "run" / "tokenizer.model"
    loaded = load_tokenizer(tmp_path / "run")
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.model_proto == tokenizer.model_proto
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["tokenizer.model"]


def test_special_token_text_maps_to_their_ids(tokenizer):
    """As transformers' XLMRobertaTokenizer: `<mask>` swallows the whitespace before it."""
    hello = tokenizer.encode(["hello"])[0].tolist()
    world = tokenizer.encode(["world"])[0].tolist()
    got = tokenizer.encode(["<s>hello  <mask>world</s><pad><unk>"])[0].tolist()
    assert got == [0, *hello, tokenizer.mask_id, *world, 2, 1, 3]
    assert tokenizer.encode(["  <mask>"])[0].tolist() == [tokenizer.mask_id]
    assert tokenizer.mask_id not in tokenizer.encode(["<masked> <Mask>"])[0]


def test_training_is_deterministic(text):
    small = {lang: text[lang][:300] for lang in ("en", "el")}
    settings = dict(vocab_size=300, input_sentence_size=600, byte_fallback=False)
    first = _train(small, **settings)
    assert _train(small, **settings).model_proto == first.model_proto
    assert _train(small, **settings, seed=1).model_proto != first.model_proto


def test_vocab_too_large_for_the_text(text):
    with pytest.raises(DataError, match=r"supports at most \d+ ids, fewer than model.vocab_size=100000"):
        _train({"en": text["en"][:200], "el": text["el"][:200]}, vocab_size=100_000, input_sentence_size=500)


def test_vocab_too_small_for_the_alphabet(text):
    with pytest.raises(DataError, match=r"model.vocab_size=300 is too small.*need at least \d+"):
        _train(text, vocab_size=300, input_sentence_size=500)


# --- BPE and bytes ---------------------------------------------------------------------------

def test_bpe_has_the_fairseq_layout_and_round_trips(text):
    from sentencepiece import sentencepiece_model_pb2
    from xlm_jax.data.tokenizers import tokenizer_kind
    bpe = _train(text, vocab_size=2000, model_type="bpe")
    proto = sentencepiece_model_pb2.ModelProto.FromString(bpe.model_proto)
    assert proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert tokenizer_kind(bpe) == "bpe"
    assert (bpe.vocab_size, bpe.mask_id, bpe.special_ids) == (2000, 1999, (0, 1, 2, 3, 1999))
    sp = spm.SentencePieceProcessor(model_proto=bpe.model_proto)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    sentences = [text[lang][5] for lang in LANGUAGES]
    for sentence, ids in zip(sentences, bpe.encode(sentences)):
        assert ids.dtype == np.int32 and len(ids) and ids.min() > 3 and ids.max() < 1999
        assert bpe.decode(ids) == unicodedata.normalize("NFKC", sentence).strip()


def test_unknown_model_type_is_refused(text):
    with pytest.raises(ValueError, match="model_type"):
        _train(text, model_type="char")


def test_byte_ids_are_fairseq_specials_then_bytes_then_mask():
    from xlm_jax.data.tokenizers import ByteTokenizer
    tok = ByteTokenizer()
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id, tok.vocab_size) == (0, 1, 2, 3, 260, 261)
    assert tok.special_ids == (0, 1, 2, 3, 260)
    [ids] = tok.encode(["é"])                      # U+00E9 is C3 A9 in UTF-8
    assert ids.dtype == np.int32 and ids.tolist() == [0xC3 + 4, 0xA9 + 4]
    assert [tok.id_to_piece(i) for i in ids] == ["<0xC3>", "<0xA9>"]
    assert [tok.id_to_piece(i) for i in (0, 1, 2, 3, 4, 259, 260)] == [
        "<s>", "<pad>", "</s>", "<unk>", "<0x00>", "<0xFF>", "<mask>"]
    assert tok.encode(["a <mask>."])[0].tolist() == [ord("a") + 4, 260, ord(".") + 4]   # as XLM-R's lstrip
    assert tok.decode([0, 0xC3 + 4, 0xA9 + 4, 2, 1]) == "é"
    assert tok.decode([0xC3 + 4]) == "\ufffd"       # half a character decodes, replaced
    with pytest.raises(DataError, match="261"):
        tok.decode([261])


def test_bytes_round_trip_every_script(shared_data):
    from xlm_jax.data.tokenizers import ByteTokenizer
    tok = ByteTokenizer()
    for path in sorted((shared_data / "mono").glob("*.txt")):
        lines = path.read_text(encoding="utf-8").split("\n")[:200]
        encoded = tok.encode(lines)
        assert [tok.decode(ids) for ids in encoded] == lines, path.name
        assert [len(ids) for ids in encoded] == [len(line.encode("utf-8")) for line in lines]


def test_byte_tokenizer_saves_and_loads(tmp_path, tokenizer):
    from xlm_jax.data.tokenizers import BYTES_FILE, ByteTokenizer
    path = save_tokenizer(ByteTokenizer(), tmp_path)
    assert path == tmp_path / BYTES_FILE and tokenizer_path(tmp_path) == path
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ByteTokenizer) and loaded.encode(["Ω"])[0].tolist() == [0xCE + 4, 0xA9 + 4]
    with pytest.raises(DataError, match="already holds"):
        save_tokenizer(tokenizer, tmp_path)       # one tokenizer per workdir
    path.write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not an xlm_jax byte tokenizer"):
        load_tokenizer(tmp_path)


def test_export_without_transformers_says_tokenizer_json_is_left_out(tokenizer, tmp_path, monkeypatch):
    from xlm_jax.data import tokenizers
    from xlm_jax.data.tokenizers import write_hf_tokenizer_files

    assert tokenizer.byte_fallback
    monkeypatch.setattr(tokenizers, "available", lambda package: package != "transformers")
    logs = []
    write_hf_tokenizer_files(tokenizer, tmp_path, log=logs.append)
    assert not (tmp_path / "tokenizer.json").exists() and (tmp_path / "sentencepiece.bpe.model").exists()
    assert len(logs) == 1 and logs[0].startswith("left out tokenizer.json: writing it needs transformers")
    assert "pip install 'xlm_jax[hf]'" in logs[0] and "use_fast=False" in logs[0]
