"""Reading a corpus dir: counts, how TSV sides feed MLM text, and every error a user can hit."""
import tempfile
import types

import hypothesis
import pytest
from hypothesis import strategies as st

from xlm_jax.data.corpus import load_corpus, read_corpus_dir
from xlm_jax.errors import DataError


def _head(path, n):
    return path.read_text(encoding="utf-8").split("\n")[:n]


@pytest.fixture
def corpus_dir(tmp_path, shared_data):
    for lang in ("en", "el", "ja"):
        (tmp_path / f"{lang}.txt").write_text("\n".join(_head(shared_data / "mono" / f"{lang}.txt", 300)) + "\n",
                                               encoding="utf-8")
    tsv = _head(shared_data / "parallel" / "tatoeba_challenge" / "en-de.tsv", 200)
    (tmp_path / "en-de.tsv").write_text("\n".join(tsv) + "\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("not a corpus file\n")
    return tmp_path


def test_counts_and_tsv_sides_feed_mono(corpus_dir, shared_data):
    corpus = read_corpus_dir(str(corpus_dir))
    assert sorted(corpus.mono) == ["de", "el", "en", "ja"]
    assert len(corpus.mono["el"]) == len(corpus.mono["ja"]) == 300
    tsv = _head(shared_data / "parallel" / "tatoeba_challenge" / "en-de.tsv", 200)
    pairs = [tuple(line.split("\t")) for line in tsv]
    assert corpus.parallel == {("en", "de"): pairs}
    assert corpus.mono["de"] == [de for _, de in pairs]
    # Monolingual text first, then the English side of the pairs.
    assert corpus.mono["en"] == _head(shared_data / "mono" / "en.txt", 300) + [en for en, _ in pairs]
    assert str(corpus_dir) in corpus.origin


def test_blank_lines_separate_documents_and_line_endings_are_stripped(tmp_path):
    (tmp_path / "de.txt").write_bytes("Erster Satz.\r\n\r\n   \nZweiter Satz.\n\nDritter".encode())
    (tmp_path / "fr.txt").write_bytes("\ufeffUne phrase.\n".encode())
    corpus = read_corpus_dir(str(tmp_path))
    assert corpus.mono == {"de": ["Erster Satz.", "Zweiter Satz.", "Dritter"], "fr": ["Une phrase."]}


def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a directory"):
        read_corpus_dir(str(tmp_path / "nope"))


def test_no_usable_files_says_what_is_expected(tmp_path):
    (tmp_path / "README.md").write_text("hello")
    with pytest.raises(DataError, match=r"no usable files.*<lang>\.txt.*<src>-<tgt>\.tsv"):
        read_corpus_dir(str(tmp_path))


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    (tmp_path / "de.txt").write_bytes("eins\nzwei\ndrei \xff vier\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"de\.txt, line 3: byte offset 15 \(0xff\) is not valid UTF-8"):
        read_corpus_dir(str(tmp_path))


def test_tsv_with_wrong_column_count(tmp_path):
    (tmp_path / "en-de.tsv").write_text("Hello\tHallo\nYes\tJa\tJawohl\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"en-de\.tsv, line 2: found 3 tab-separated column\(s\), expected 2"):
        read_corpus_dir(str(tmp_path))


def test_tsv_with_an_empty_side(tmp_path):
    (tmp_path / "en-de.tsv").write_text("Hello\tHallo\nYes\t \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"en-de\.tsv, line 2: one side of the pair is empty"):
        read_corpus_dir(str(tmp_path))


def test_empty_file(tmp_path):
    (tmp_path / "de.txt").write_text("Satz.\n", encoding="utf-8")
    (tmp_path / "fr.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"fr\.txt is empty"):
        read_corpus_dir(str(tmp_path))


def test_language_without_text(tmp_path):
    (tmp_path / "de.txt").write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"de\.txt has no non-empty line"):
        read_corpus_dir(str(tmp_path))


@pytest.mark.parametrize("name", ["notes.txt", "en.v2.txt", "EN.txt", "en-de.txt", "en.tsv", "en-en.tsv"])
def test_badly_named_corpus_file(tmp_path, name):
    (tmp_path / "de.txt").write_text("Satz.\n", encoding="utf-8")
    (tmp_path / name).write_text("text\ttext\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}: the name is neither"):
        read_corpus_dir(str(tmp_path))


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(st.binary(max_size=200), st.sampled_from(["de.txt", "en-de.tsv"]))
def test_random_bytes_read_or_raise_data_error(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/{name}", "wb") as f:
            f.write(data)
        try:
            corpus = read_corpus_dir(tmp)
        except DataError:
            return
        assert all(s.strip() for sentences in corpus.mono.values() for s in sentences)


def _data_config(corpus_dir, **overrides):
    fields = dict(corpus_dir=str(corpus_dir), max_sentences_per_language=0, min_languages=2)
    return types.SimpleNamespace(**{**fields, **overrides})


def test_load_corpus_caps_each_language_to_its_first_sentences(corpus_dir):
    full = read_corpus_dir(str(corpus_dir))
    capped = load_corpus(_data_config(corpus_dir, max_sentences_per_language=10))
    assert {lang: s for lang, s in capped.mono.items()} == {lang: s[:10] for lang, s in full.mono.items()}
    assert capped.parallel[("en", "de")] == full.parallel[("en", "de")][:10]


def test_load_corpus_needs_min_languages(corpus_dir):
    with pytest.raises(DataError, match=r"4 language\(s\) \(de, el, en, ja\), fewer than data.min_languages=5"):
        load_corpus(_data_config(corpus_dir, min_languages=5))
