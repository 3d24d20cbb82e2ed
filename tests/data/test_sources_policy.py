"""data.files, .gz corpora and data.on_bad_line: every bad line is an error naming it, or skipped and counted."""
import gzip
import tempfile
import types

import hypothesis
import pytest
from hypothesis import strategies as st

from xlm_jax import config as config_lib
from xlm_jax.data.corpus import load_corpus, read_corpus_dir
from xlm_jax.data.sources import Reader, parse_files_spec
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.modes.prepare import validate


def _data_config(**overrides):
    fields = dict(corpus_dir="", files="", max_sentences_per_language=0, min_languages=1,
                  on_bad_line="error", max_line_chars=100_000)
    return types.SimpleNamespace(**{**fields, **overrides})


def _head(path, n):
    return path.read_text(encoding="utf-8").split("\n")[:n]


def test_gz_files_read_like_plain_ones(tmp_path, shared_data):
    en = _head(shared_data / "mono" / "en.txt", 100)
    tsv = _head(shared_data / "parallel" / "tatoeba_challenge" / "en-de.tsv", 50)
    (tmp_path / "en.txt.gz").write_bytes(gzip.compress(("\n".join(en) + "\n").encode()))
    (tmp_path / "en-de.tsv.gz").write_bytes(gzip.compress("\n".join(tsv).encode()))
    corpus = read_corpus_dir(str(tmp_path))
    pairs = [tuple(line.split("\t")) for line in tsv]
    assert corpus.parallel == {("en", "de"): pairs}
    assert corpus.mono["en"] == en + [e for e, _ in pairs]


def test_corrupt_gz_names_the_file(tmp_path):
    (tmp_path / "en.txt.gz").write_bytes(gzip.compress(b"hello\n" * 100)[:-20])
    with pytest.raises(DataError, match=r"en\.txt\.gz: cannot read this gzip file"):
        read_corpus_dir(str(tmp_path))


def test_files_per_language_with_globs(tmp_path, shared_data):
    (tmp_path / "a").mkdir()
    el = _head(shared_data / "mono" / "el.txt", 40)
    (tmp_path / "a" / "part1.txt").write_text("\n".join(el[:20]), encoding="utf-8")
    (tmp_path / "a" / "part2.txt").write_text("\n".join(el[20:]), encoding="utf-8")
    (tmp_path / "ja.gz").write_bytes(gzip.compress("\n".join(_head(shared_data / "mono" / "ja.txt", 10)).encode()))
    (tmp_path / "pairs").write_text("Hello\tHallo\n", encoding="utf-8")
    spec = f"el:{tmp_path}/a/*.txt; ja:{tmp_path}/ja.gz ;en-de:{tmp_path}/pairs"
    corpus = load_corpus(_data_config(files=spec))
    assert corpus.mono["el"] == el
    assert len(corpus.mono["ja"]) == 10
    assert corpus.parallel == {("en", "de"): [("Hello", "Hallo")]} and corpus.mono["de"] == ["Hallo"]
    assert "data.files (4 files)" in corpus.origin


def test_corpus_dir_and_files_merge(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "en.txt").write_text("one\n", encoding="utf-8")
    (tmp_path / "more.txt").write_text("two\n", encoding="utf-8")
    corpus = load_corpus(_data_config(corpus_dir=str(tmp_path / "d"), files=f"en:{tmp_path}/more.txt"))
    assert corpus.mono == {"en": ["one", "two"]}


@pytest.mark.parametrize("pattern,message", [("nope/*.txt", "matches no file"),
                                             ("missing.txt", "does not exist or is not a file")])
def test_missing_file_or_empty_glob_fails_before_reading(tmp_path, pattern, message):
    (tmp_path / "bad.txt").write_bytes(b"\xff\n")   # would fail if it were read first
    spec = f"en:{tmp_path}/bad.txt;sw:{tmp_path}/{pattern}"
    with pytest.raises(DataError, match=rf"data.files: sw: '.*{pattern.replace('*', '[*]')}' {message}"):
        load_corpus(_data_config(files=spec))


@pytest.mark.parametrize("spec,message", [("en", "has no ':'"), ("EN:/x", "neither a language code"),
                                          ("en-en:/x", "neither a language code"), ("en: , ", "names no file"),
                                          ("en:/a;en:/b", "appears twice")])
def test_files_spec_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_files_spec(spec)
    config = config_lib.default_config()
    config.data.files = spec
    with pytest.raises(ConfigError, match=r"data\.files"):
        validate(config)


def test_files_spec_dict_form():
    assert parse_files_spec({"en": "/a/*.txt,/b.txt", "en-de": ["/c.tsv"]}) == [
        ("en", ["/a/*.txt", "/b.txt"]), ("en-de", ["/c.tsv"])]


def test_config_fields_are_validated():
    config = config_lib.default_config()
    config.data.on_bad_line = "ignore"
    with pytest.raises(ConfigError, match=r"data\.on_bad_line.*error, skip"):
        validate(config)
    config = config_lib.default_config()
    config.data.max_line_chars = -1
    with pytest.raises(ConfigError, match=r"data\.max_line_chars"):
        validate(config)


def _bad_file(tmp_path):
    lines = [b"good one", b"", b"bad \xff byte", b"x" * 50, b"  ", b"good two", b"\xc3 broken", b"y" * 60]
    (tmp_path / "en.txt").write_bytes(b"\n".join(lines) + b"\n")
    return tmp_path / "en.txt"


def test_error_policy_names_file_and_line(tmp_path):
    path = _bad_file(tmp_path)
    with pytest.raises(DataError, match=r"en\.txt, line 3: byte offset 14 \(0xff\) is not valid UTF-8.*=skip"):
        Reader("error", 40).read_txt(str(path))
    path.write_bytes(b"ok\n" + b"x" * 50 + b"\n")
    with pytest.raises(DataError, match=r"en\.txt, line 2: 50 characters, more than data.max_line_chars=40"):
        Reader("error", 40).read_txt(str(path))


def test_skip_policy_counts_and_logs_once_per_file(tmp_path):
    path = _bad_file(tmp_path)
    logs = []
    reader = Reader("skip", 40, logs.append)
    assert reader.read_txt(str(path)) == ["good one", "good two"]
    assert logs == [f"skipped 4 lines of {path}: 2 undecodable (first at line 3), 2 over-long (first at line 4); "
                    "kept 2, 2 empty lines ignored"]
    corpus = load_corpus(_data_config(corpus_dir=str(tmp_path), on_bad_line="skip", max_line_chars=40))
    assert corpus.origin.endswith("(skipped 4 bad lines in 1 files (2 undecodable, 2 over-long))")


def test_skip_policy_tsv_rows_and_total_in_origin(tmp_path):
    (tmp_path / "en-de.tsv").write_text("Hi\tHallo\nYes\tJa\tJawohl\n\nNo\t \nBye\tTschüss\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("Hello\n", encoding="utf-8")
    logs = []
    corpus = load_corpus(_data_config(corpus_dir=str(tmp_path), on_bad_line="skip"), log=logs.append)
    assert corpus.parallel == {("en", "de"): [("Hi", "Hallo"), ("Bye", "Tschüss")]}
    assert logs == [f"skipped 2 lines of {tmp_path}/en-de.tsv: 1 with a wrong column count (line 2), "
                    "1 with an empty side (line 4); kept 2, 1 empty lines ignored"]
    assert "skipped 2 bad lines in 1 files (1 with a wrong column count, 1 with an empty side)" in corpus.origin


def test_skip_policy_drops_empty_files_and_languages_loudly(tmp_path):
    (tmp_path / "en.txt").write_text("Hello\n", encoding="utf-8")
    (tmp_path / "fr.txt").write_bytes(b"")
    (tmp_path / "sw.txt").write_bytes(b"\xff\xfe\n\n")
    logs = []
    corpus = load_corpus(_data_config(corpus_dir=str(tmp_path), on_bad_line="skip"), log=logs.append)
    assert corpus.mono == {"en": ["Hello"]}
    assert any("fr.txt is empty" in line and "skipped" in line for line in logs)
    assert any("sw.txt has no non-empty line left after skipping bad lines" in line for line in logs)
    assert any("language fr has no text" in line for line in logs)
    assert any("language sw has no text" in line for line in logs)
    assert "dropped 4 files/languages without text" in corpus.origin
    with pytest.raises(DataError, match=r"1 language\(s\) \(en\), fewer than data.min_languages=2"):
        load_corpus(_data_config(corpus_dir=str(tmp_path), on_bad_line="skip", min_languages=2), log=logs.append)


def _number_of_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


_PIECES = [b"a", b"\xc3\xa9", b"\t", b"\n", b"\r", b" ", b"\xff", b"\xc3", b"\xef\xbb\xbf"]
_LINE_BYTES = st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join)   # bytes that look like lines


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(st.one_of(st.binary(max_size=200), _LINE_BYTES),
                  st.sampled_from(["de.txt", "de.txt.gz", "en-de.tsv", "en-de.tsv.gz"]),
                  st.sampled_from(["error", "skip"]), st.sampled_from([0, 5]))
def test_fuzz_random_bytes_read_or_raise_data_error_and_counts_add_up(data, name, policy, max_chars):
    logs = []
    reader = Reader(policy, max_chars, logs.append)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{name}"
        with open(path, "wb") as f:
            f.write(gzip.compress(data) if name.endswith(".gz") else data)
        try:
            if ".tsv" in name:
                rows = reader.read_tsv(path, "en", "de")
                assert all(a.strip() and b.strip() and "\t" not in a + b for a, b in rows)
            else:
                rows = reader.read_txt(path)
                assert all(s.strip() and "\n" not in s for s in rows)
            if max_chars:
                assert all(len(s) <= max_chars for row in rows for s in ([row] if isinstance(row, str) else row))
        except DataError:
            return
    stats = reader.stats[-1]
    assert stats.kept == len(rows)
    lines = _number_of_lines(data.removeprefix(b"\xef\xbb\xbf"))
    assert stats.kept + stats.num_skipped + stats.empty == stats.lines == lines
    if policy == "error":
        assert stats.num_skipped == 0


def test_fuzz_gz_of_random_bytes_is_a_data_error(tmp_path):
    (tmp_path / "de.txt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=r"de\.txt\.gz: cannot read this gzip file"):
        read_corpus_dir(str(tmp_path))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.binary(max_size=100))
def test_fuzz_random_bytes_as_gz_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/de.txt.gz", "wb") as f:
            f.write(data)
        try:
            corpus = read_corpus_dir(tmp, Reader("skip"))
        except DataError as error:   # not gzip, or nothing left: the message names what to fix
            assert "de.txt.gz" in str(error) or "no language" in str(error).lower(), str(error)
        else:
            assert all(s.strip() and "\n" not in s for s in corpus.mono.get("de", []))
