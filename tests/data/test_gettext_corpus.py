"""The built-in corpus from gettext catalogs: this machine's, and hand-written .mo files parsed exactly."""
import glob
import os
import struct

import pytest

from xlm_jax.data.gettext_corpus import DEFAULT_LOCALE_DIRS, read_gettext_catalogs
from xlm_jax.errors import DataError


def write_mo(path, messages: dict[str, str]) -> None:
    """A GNU .mo file: header, then tables of (length, offset) for msgids and msgstrs, sorted by msgid."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items(),
                     key=lambda kv: kv[0].encode())
    count = len(entries)
    ids_table, strs_table = 28, 28 + 8 * count
    offset, blob, tables = 28 + 16 * count, b"", ([], [])
    for column in (0, 1):
        for entry in entries:
            text = entry[column].encode()
            tables[column].append(struct.pack("<2I", len(text), offset + len(blob)))
            blob += text + b"\0"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<7I", 0x950412DE, 0, count, ids_table, strs_table, 0, 0))
        f.write(b"".join(tables[0] + tables[1]) + blob)


@pytest.fixture(scope="module")
def machine_catalogs():
    if not any(glob.glob(f"{d}/*/LC_MESSAGES/*.mo") for d in DEFAULT_LOCALE_DIRS):
        pytest.skip("this machine has no gettext catalogs under " + ", ".join(DEFAULT_LOCALE_DIRS))
    return read_gettext_catalogs()


def test_machine_catalogs_are_a_parallel_multilingual_corpus(machine_catalogs):
    corpus = machine_catalogs
    assert len(corpus.mono) >= 50 and "en" in corpus.mono
    english, german = set(corpus.mono["en"]), set(corpus.mono["de"])
    pairs = corpus.parallel[("en", "de")]
    assert len(pairs) > 1000
    assert all(en in english and de in german for en, de in pairs)
    for sentences in corpus.mono.values():
        assert len(set(sentences)) == len(sentences)
        assert all(s and "\n" not in s for s in sentences)
    assert "languages" in corpus.origin


def test_hand_written_catalogs_are_parsed_exactly(tmp_path):
    write_mo(tmp_path / "de/LC_MESSAGES/b.mo", {
        "Hello": "Hallo",
        "Open file": "Datei öffnen",
        "%s: %d": "%s: %d (de)",                 # no words: dropped
        "Same": "Same",                          # untranslated copy: dropped
        "Untranslated": "",                      # empty: dropped
        "menu\x04Quit": "Beenden",               # context is not part of the text
        "%d file\x00%d files": "%d Datei\x00%d Dateien",   # plural: first form
        "Line one\nLine two\n": "Zeile eins\nZeile zwei\n",
        "Two lines\nhere": "Eine Zeile",          # line counts differ: MLM text, no pair
    })
    write_mo(tmp_path / "de/LC_MESSAGES/a.mo", {"Hello": "Hallo", "Cancel": "Abbrechen"})
    write_mo(tmp_path / "sr@latin/LC_MESSAGES/a.mo", {"Hello": "Zdravo"})
    write_mo(tmp_path / "pt_BR/LC_MESSAGES/a.mo", {"Hello": "Olá"})
    write_mo(tmp_path / "en_GB/LC_MESSAGES/a.mo", {"Color": "Colour"})        # English variant: skipped
    (tmp_path / "de/LC_MESSAGES/broken.mo").write_bytes(b"not a catalog")
    (tmp_path / "locale.alias").write_text("not a locale dir")

    corpus = read_gettext_catalogs([str(tmp_path)], min_languages=2)
    assert sorted(corpus.mono) == ["de", "en", "pt_BR", "sr_Latn"]
    # Files in name order, entries in msgid byte order (as msgfmt writes them), first occurrence kept.
    assert corpus.mono["de"] == ["Abbrechen", "Hallo", "%d Datei", "Zeile eins", "Zeile zwei", "Datei öffnen",
                                 "Eine Zeile", "Beenden"]
    assert corpus.mono["en"] == ["Cancel", "Hello", "%d file", "Line one", "Line two", "Open file", "Two lines",
                                 "here", "Quit"]
    assert corpus.parallel[("en", "de")] == [
        ("Cancel", "Abbrechen"), ("Hello", "Hallo"), ("%d file", "%d Datei"), ("Line one", "Zeile eins"),
        ("Line two", "Zeile zwei"), ("Open file", "Datei öffnen"), ("Quit", "Beenden")]
    assert corpus.parallel[("en", "sr_Latn")] == [("Hello", "Zdravo")]
    assert corpus.mono["pt_BR"] == ["Olá"]
    assert "1 unreadable .mo files skipped" in corpus.origin


def test_too_few_languages_points_to_corpus_dir(tmp_path):
    write_mo(tmp_path / "de/LC_MESSAGES/a.mo", {"Hello": "Hallo"})
    expected = r"2 language\(s\), fewer than data.min_languages=3.*--config.data.corpus_dir"
    with pytest.raises(DataError, match=expected):
        read_gettext_catalogs([str(tmp_path)], min_languages=3)
    with pytest.raises(DataError, match="--config.data.corpus_dir"):
        read_gettext_catalogs([str(tmp_path / "missing")])
