"""Virtual shards: the row -> shard map, byte-range reading, and every source divided into disjoint shards."""
import gzip
import io
import types

import numpy as np
import pytest

from xlm_jax import config as config_lib
from xlm_jax.data import shards as shards_lib
from xlm_jax.data.corpus import load_corpus, plan_corpus, read_shards
from xlm_jax.data.shards import Part, check_shards, owned_shards, read_lines, row_shard
from xlm_jax.data.sources import Reader
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.modes.prepare import validate


@pytest.mark.parametrize("batch,shards,processes", [(8, 8, 1), (8, 8, 2), (8, 4, 4), (16, 4, 2), (32, 8, 8),
                                                    (24, 6, 3), (12, 12, 4)])
def test_processes_own_disjoint_shards_that_match_their_rows(batch, shards, processes):
    owned = [set(owned_shards(p, processes, shards)) for p in range(processes)]
    assert set().union(*owned) == set(range(shards)) and sum(map(len, owned)) == shards
    for p in range(processes):   # process p builds rows p * batch / P ... (p + 1) * batch / P - 1
        rows = range(p * batch // processes, (p + 1) * batch // processes)
        assert {row_shard(j, batch, shards) for j in rows} == owned[p]
    rows_of_shard = [[j for j in range(batch) if row_shard(j, batch, shards) == s] for s in range(shards)]
    assert all(len(rows) == batch // shards for rows in rows_of_shard)   # whatever the process count


def _config(batch, shards):
    config = config_lib.default_config()
    config.train.batch_size, config.data.shards = batch, shards
    return config


def test_shards_must_divide_the_batch_and_be_a_multiple_of_the_processes():
    assert check_shards(_config(16, 0), 4) == 16 and check_shards(_config(16, 4), 2) == 4
    with pytest.raises(ConfigError, match=r"`data.shards`: 6 shards must divide train.batch_size=16 and be a "
                                          r"multiple of the 2 process\(es\); use one of 2, 4, 8, 16"):
        check_shards(_config(16, 6), 2)
    with pytest.raises(ConfigError, match=r"`data.shards`: 2 shards .* 4 process\(es\); use one of 4, 8, 16 "
                                          r"\(0 = 16, one per row\)"):
        check_shards(_config(16, 2), 4)
    with pytest.raises(ConfigError, match=r"`train.batch_size`: 16 is not divisible by the 3 processes"):
        check_shards(_config(16, 0), 3)
    with pytest.raises(ConfigError, match=r"`data.shards`: got 5; .* use one of 1, 2, 4, 8, 16"):
        validate(_config(16, 5))
    with pytest.raises(ConfigError, match=r"`data.shards`"):
        validate(_config(16, -2))


class CountingFile(io.BytesIO):
    """A file that records which bytes were read."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.spans = []

    def read(self, size=-1):
        start = self.tell()
        out = super().read(size)
        self.spans.append((start, start + len(out)))
        return out


# CRLF and LF endings, empty lines, 2- and 3-byte UTF-8, a line longer than a range, no final newline
_AWKWARD = ("first line\r\nζωή και ελπίδα\n\n\r\n日本語のテキストです\n" + "x" * 300 + "\n"
            + "é" * 40 + "\r\nshort\n\n" + "last line without newline").encode()


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 64])
def test_byte_ranges_hold_every_line_once_in_order(count):
    text = _AWKWARD * 200    # ~60 kB: ranges of 1 kB to all of it
    longest = max(map(len, text.split(b"\n"))) + 1
    pieces = []
    for s in range(count):
        start, end = Part(s, count).byte_range(len(text))
        f = CountingFile(text)
        offset, data, complete = read_lines(f, start, end)
        assert complete and text[offset:offset + len(data)] == data
        if data:
            assert (offset == 0 or text[offset - 1:offset] == b"\n") and start <= offset < end
        # a range reads itself, the rest of the line before it and of its last line, and a chunk more at most
        assert all(max(start - 1, 0) <= a and b <= end + longest + shards_lib._CHUNK for a, b in f.spans)
        assert sum(b - a for a, b in f.spans) <= end - start + 2 * (longest + shards_lib._CHUNK)
        pieces.append(data)
    assert b"".join(pieces) == text


def test_limited_reads_of_a_range_stop_early_and_continue_exactly():
    data = b"".join(f"line {i}\n".encode() for i in range(5000))
    start, end = Part(1, 2).byte_range(len(data))
    f = CountingFile(data)
    offset, head, complete = read_lines(f, start, end, budget=100)
    assert not complete and head.count(b"\n") == len(head.splitlines()) < 20
    assert sum(b - a for a, b in f.spans) < 100 + 2 * shards_lib._CHUNK
    whole = read_lines(CountingFile(data), start, end)[1]
    assert whole.startswith(head)


def test_reader_parts_of_a_file_read_every_line_once(tmp_path):
    path = tmp_path / "de.txt"
    path.write_bytes(_AWKWARD)
    whole = Reader().read_txt(str(path))
    for count in (1, 3, 8):
        parts = [Reader().read_txt(str(path), Part(s, count)) for s in range(count)]
        assert [line for part in parts for line in part] == whole
    assert whole[0] == "first line" and whole[-1] == "last line without newline" and "" not in whole


def _bad_line_in_a_later_range(tmp_path, name: str, lines: list[bytes], bad: int, count: int):
    """(path, data, offset of line `bad`, the Part of `count` whose byte range holds it, not the first)."""
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    path.write_bytes(data)
    at = len(b"\n".join(lines[:bad])) + 1
    part = next(Part(s, count) for s in range(count) if Part(s, count).byte_range(len(data))[0] <= at
                < Part(s, count).byte_range(len(data))[1])
    assert part.index > 0
    return path, data, at, part


def test_bad_lines_in_a_range_are_named_by_line_and_byte(tmp_path):
    lines = [b"good %d" % i for i in range(40)]
    lines[30] = b"bad \xff byte"
    path, data, at, part = _bad_line_in_a_later_range(tmp_path, "en.txt", lines, 30, 4)
    with pytest.raises(DataError, match=rf"en\.txt, line 31 at byte {at}: byte offset {at + 4} \(0xff\) is not "
                                        r"valid UTF-8"):
        Reader("error").read_txt(str(path), part)
    assert data[at:].startswith(b"bad \xff")
    logs = []
    kept = Reader("skip", log=logs.append).read_txt(str(path), part)
    assert len(kept) == len(Reader("skip").read_txt(str(path), part)) and "bad \ufffd byte" not in kept
    assert logs == [f"skipped 1 lines of {path} (byte range {part.index + 1} of 4): 1 undecodable (line 31 at "
                    f"byte {at}); kept {len(kept)}, 0 empty lines ignored"]
    with pytest.raises(DataError, match=r"en\.txt, line 31: byte offset"):   # the first range: line numbers
        Reader("error").read_txt(str(path), Part(0, 1))


def test_a_bad_tsv_line_in_a_later_range_is_named_by_line_and_byte(tmp_path):
    lines = [b"good %d\tgut %d" % (i, i) for i in range(50)]
    lines[37] = b"one column only"
    path, data, at, part = _bad_line_in_a_later_range(tmp_path, "en-de.tsv", lines, 37, 5)
    assert data[at:].startswith(b"one column")
    with pytest.raises(DataError, match=rf"en-de\.tsv, line 38 at byte {at}: found 1 tab-separated column"):
        Reader("error").read_tsv(str(path), "en", "de", part)


def _gz(path, lines):
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_gz_files_go_whole_to_shards_or_by_line(tmp_path):
    """Four files, two shards: file i to shard i mod 2. One file, two shards: every other line."""
    for i in range(4):
        _gz(tmp_path / f"part{i}.txt.gz", [f"en {i}.{j}" for j in range(5)])
    _gz(tmp_path / "sw.txt.gz", [f"sw {j}" for j in range(9)])
    config = types.SimpleNamespace(files=f"en:{tmp_path}/part*.txt.gz;sw:{tmp_path}/sw.txt.gz",
                                   max_sentences_per_language=0, min_languages=1)
    plan = plan_corpus(config, 2)
    assert [u.how for u in plan.units] == ["whole"] * 4 + ["lines"]
    shards, counts = read_shards(plan, [0, 1], Reader())
    assert shards[0].mono["en"] == [f"en {i}.{j}" for i in (0, 2) for j in range(5)]
    assert shards[1].mono["en"] == [f"en {i}.{j}" for i in (1, 3) for j in range(5)]
    assert shards[0].mono["sw"] == [f"sw {j}" for j in range(0, 9, 2)]
    assert shards[1].mono["sw"] == [f"sw {j}" for j in range(1, 9, 2)]
    assert counts[:, 1].tolist() == [5, 5, 5, 5, 9]     # kept lines per unit, each read by one shard
    one, _ = read_shards(plan, [1], Reader())
    assert one[1].mono == shards[1].mono
    limited, _ = read_shards(plan, [1], Reader(), limit=3)
    assert {lang: lines[:3] for lang, lines in limited[1].mono.items()} == {
        lang: lines[:3] for lang, lines in shards[1].mono.items()}


def test_prepared_corpus_splits_are_divided_evenly(tmp_path, shared_data):
    from xlm_jax.data.tfds_builder import prepare_local_corpus

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    el = (shared_data / "mono" / "el.txt").read_text(encoding="utf-8").split("\n")[:50]
    (corpus / "el.txt").write_text("\n".join(el) + "\n", encoding="utf-8")
    (corpus / "en-de.tsv").write_text("".join(f"en {i}\tde {i}\n" for i in range(30)), encoding="utf-8")
    path = prepare_local_corpus(str(corpus), str(tmp_path / "tfds"), name="p")
    config = types.SimpleNamespace(prepared_corpus=path, max_sentences_per_language=0, min_languages=1)
    plan = plan_corpus(config, 4)
    shards, counts = read_shards(plan, range(4), Reader())
    assert [line for s in range(4) for line in shards[s].mono["el"]] == el
    assert [pair for s in range(4) for pair in shards[s].parallel[("en", "de")]] == [
        (f"en {i}", f"de {i}") for i in range(30)]
    assert [len(shards[s].mono["el"]) for s in range(4)] == [13, 13, 12, 12]
    assert counts[:, 0].sum() == 80


def test_whole_corpus_checks_see_every_shard(tmp_path):
    """A file is empty, or without text, only if it is so in every shard; the error names it."""
    (tmp_path / "en.txt").write_text("Hello\n" * 20, encoding="utf-8")
    (tmp_path / "sw.txt").write_bytes(b"\n" * 30)
    config = types.SimpleNamespace(corpus_dir=str(tmp_path), max_sentences_per_language=0, min_languages=1,
                                   on_bad_line="error")
    with pytest.raises(DataError, match=r"sw\.txt has no non-empty line; remove it"):
        load_corpus(config)
    plan = plan_corpus(config, 4)
    _, counts = read_shards(plan, range(4), Reader())
    assert counts[:, :2].tolist() == [[20, 20], [30, 0]]
    assert np.all(counts[:, 2:] == 0)
