"""Corpus files: finding them (corpus dirs, `data.files`) and reading them, whole or a shard's part,
with one bad-line policy.

xlm_jax.data.corpus puts the sources of a config together into a `Corpus` of per-language
sentences (for MLM) and sentence pairs (for TLM), shard by shard; xlm_jax.data.gettext_corpus
reads the built-in corpus.
"""
import dataclasses
import glob
import gzip
import itertools
import logging
import os
import re
import zlib
from typing import Callable

import numpy as np

from xlm_jax.data.shards import Part, read_lines
from xlm_jax.errors import ConfigError, DataError

_LANG = r"[a-z]{2,3}(?:_[A-Za-z0-9]{2,8})*"
_TXT_NAME = re.compile(rf"({_LANG})\.txt")
_TSV_NAME = re.compile(rf"({_LANG})-({_LANG})\.tsv")
_LANG_KEY = re.compile(_LANG)
_TSV_KEY = re.compile(rf"({_LANG})-({_LANG})")
_CORPUS_SUFFIXES = (".txt", ".tsv", ".txt.gz", ".tsv.gz")
EXPECTED_FILES = ("<lang>.txt files (one sentence or paragraph per line, e.g. en.txt, pt_BR.txt) "
                  "and/or <src>-<tgt>.tsv files (two tab-separated columns, e.g. en-de.tsv), "
                  "optionally gzip-compressed (en.txt.gz)")
BAD_LINE_POLICIES = ("error", "skip")     # data.on_bad_line
SKIP_REASONS = ("undecodable", "over-long", "with a wrong column count", "with an empty side")
DEFAULT_MAX_LINE_CHARS = 100_000          # data.max_line_chars


@dataclasses.dataclass
class Corpus:
    mono: dict[str, list[str]]                               # language -> sentences for MLM
    parallel: dict[tuple[str, str], list[tuple[str, str]]]   # (src, tgt) -> pairs for TLM
    origin: str                                              # for logs


@dataclasses.dataclass
class ReadStats:
    """What reading one source (or one shard's part of it) did with its lines: kept, empty
    (ignored), skipped by reason."""
    source: str
    lines: int = 0
    kept: int = 0
    empty: int = 0
    skipped: dict[str, list] = dataclasses.field(default_factory=dict)   # reason -> [count, first position]

    def skip(self, reason: str, position: Callable[[], str]) -> None:
        """Counts a skipped line; `position()` names it, asked only for a reason's first line."""
        if reason not in self.skipped:
            self.skipped[reason] = [0, position()]
        self.skipped[reason][0] += 1

    @property
    def num_skipped(self) -> int:
        return sum(count for count, _ in self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{count} {reason} ({'first at ' if count > 1 else ''}{first})"
                            for reason, (count, first) in self.skipped.items())
        return (f"skipped {self.num_skipped} lines of {self.source}: {reasons}; "
                f"kept {self.kept}, {self.empty} empty lines ignored")


class Reader:
    """Reads corpus files with one bad-line policy and keeps the counts for the logs.

    policy "error": the first bad line raises DataError naming file and line (and byte).
    policy "skip": bad lines are skipped, counted per reason and logged once per file;
    a file or language left without text is dropped and logged. Empty lines are never
    errors: they separate documents and are counted.
    """

    def __init__(self, on_bad_line: str = "error", max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                 log: Callable[[str], None] | None = None):
        if on_bad_line not in BAD_LINE_POLICIES:
            raise DataError(f"data.on_bad_line={on_bad_line!r}; allowed values: {', '.join(BAD_LINE_POLICIES)}")
        self.on_bad_line = on_bad_line
        self.max_line_chars = max_line_chars
        self.log = log or logging.getLogger(__name__).warning
        self.stats: list[ReadStats] = []
        self.dropped: list[str] = []    # files and languages skipped whole, with the reason
        self.bytes_read = 0             # of text (decompressed), for the logs
        self._unpacked = ("", b"")      # the last .gz file read whole: its shards are read one after another

    @classmethod
    def from_config(cls, data_config, log=None) -> "Reader":
        return cls(getattr(data_config, "on_bad_line", "error"),
                   getattr(data_config, "max_line_chars", DEFAULT_MAX_LINE_CHARS), log)

    def quiet(self) -> "Reader":
        """The same policy, logging nothing: for text another process has read, checked and logged."""
        return Reader(self.on_bad_line, self.max_line_chars, lambda _: None)

    def bad(self, stats: ReadStats, reason: str, where: str, position: Callable[[], str], problem: str) -> None:
        """A bad line: raise under "error", count under "skip"."""
        if self.on_bad_line == "error":
            raise DataError(f"{where}, {position()}: {problem} (or set --config.data.on_bad_line=skip to "
                            "skip and count such lines)")
        stats.skip(reason, position)

    def drop(self, message: str) -> None:
        """A file or language without usable text: raise under "error", log and record under "skip"."""
        if self.on_bad_line == "error":
            raise DataError(message)
        self.dropped.append(message)
        self.log(f"data.on_bad_line=skip: {message}; skipped")

    def finish(self, stats: ReadStats) -> None:
        self.stats.append(stats)
        if stats.num_skipped:
            self.log(stats.summary())

    def require_text(self, source: str, lines: int, kept: int, skipped: bool, pair=None) -> None:
        """A file (all of it, over every shard) with no usable line is dropped (see `drop`);
        `pair` = (src, tgt) for a TSV file, so the message says what it should hold."""
        if kept:
            return
        expected = "one sentence per line" if pair is None else "<{}>TAB<{}> pairs".format(*pair)
        problem = "is empty" if not lines else "has no non-empty line" + (
            " left after skipping bad lines" if skipped else "")
        self.drop(f"{source} {problem}; remove it or fill it with {expected}")

    def lines(self, data: bytes, stats: ReadStats, where: str, first_line: int = 1, first_byte: int | None = None,
              select: Callable[[int], bool] | None = None, pair: tuple[str, str] | None = None):
        """Each non-empty, decodable line of `data` within max_line_chars: its text, or with
        `pair` = (src, tgt) its two tab-separated columns, both non-empty.

        `where` names the source in messages ("path" or "path, example 3"). Lines are named
        "line N", counted from `first_line`; in data that starts at byte `first_byte` > 0 of the
        file `where` (a shard's byte range), "line N at byte B", N counted in the file only when
        a line is reported, so the good path reads nothing twice. `select(index)` keeps some
        lines only (a shard's share of a .gz file); the others are neither checked nor counted. A UTF-8 BOM at the start of a
        file and the CR of CRLF endings are removed.
        """
        shift = 0
        if not first_byte and data.startswith(b"\xef\xbb\xbf"):
            data, shift = data[3:], 3
        try:
            texts, raw = data.decode("utf-8").split("\n"), None
        except UnicodeDecodeError:
            texts, raw = None, data.split(b"\n")
        starts = None

        def start_of(index: int) -> int:    # the line's offset in the file
            nonlocal starts
            if starts is None:
                starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1])
            return (first_byte or 0) + shift + int(starts[index])

        def position(index: int) -> str:
            if not first_byte:
                return f"line {first_line + index}"
            return f"line {line_number(where, start_of(index))} at byte {start_of(index)}"

        def bad(index: int, reason: str, problem: str) -> None:
            self.bad(stats, reason, where, lambda: position(index), problem)

        count = len(texts if raw is None else raw)
        if (texts[-1] == "" if raw is None else raw[-1] == b""):
            count -= 1              # the newline ending the last line does not start another
        for index in range(count):
            if select is not None and not select(index):
                continue
            stats.lines += 1
            if raw is None:
                text = texts[index]
            else:
                try:
                    text = raw[index].decode("utf-8")
                except UnicodeDecodeError as e:
                    bad(index, "undecodable", f"byte offset {start_of(index) + e.start} (0x{raw[index][e.start]:02x}) "
                        "is not valid UTF-8; convert the file to UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`)")
                    continue
            text = text.removesuffix("\r")
            if not text.strip():
                stats.empty += 1
            elif self.max_line_chars and len(text) > self.max_line_chars:
                bad(index, "over-long", f"{len(text)} characters, more than data.max_line_chars="
                    f"{self.max_line_chars}; split the line or raise --config.data.max_line_chars")
            elif pair is None:
                yield text
            elif len(columns := text.split("\t")) != 2:
                bad(index, "with a wrong column count", f"found {len(columns)} tab-separated column(s), "
                    f"expected 2 (<{pair[0]} sentence>TAB<{pair[1]} sentence>)")
            elif not columns[0].strip() or not columns[1].strip():
                bad(index, "with an empty side", "one side of the pair is empty; every line needs text in "
                    "both columns")
            else:
                yield columns[0], columns[1]

    def read_txt(self, path: str, part: Part | None = None, limit: int | None = None) -> list[str]:
        """The non-empty lines of a text file (.gz: gzip-compressed), or of one shard's `part` of it;
        with `limit`, its first `limit` lines only (reading little more than those)."""
        return self._rows(path, part, limit, None)

    def read_tsv(self, path: str, src: str, tgt: str, part: Part | None = None,
                 limit: int | None = None) -> list[tuple[str, str]]:
        """The pairs of a two-column TSV file (.gz: gzip-compressed), or of `part` of it, as read_txt."""
        return self._rows(path, part, limit, (src, tgt))

    def _rows(self, path, part, limit, pair) -> list:
        """The rows (`lines`) of the file or part; with `limit`, reads growing prefixes of the part
        until it has `limit` rows or has read all of it."""
        budget = None if limit is None else _FIRST_BUDGET
        while True:
            stats = ReadStats(path + (part.describe() if part else ""))
            data, first_byte, select, complete = self._part_bytes(path, part, budget)
            rows = list(itertools.islice(self.lines(data, stats, path, first_byte=first_byte, select=select,
                                                    pair=pair), limit))
            if limit is None or len(rows) >= limit or complete:
                break
            budget *= 8
        stats.kept = len(rows)
        self.finish(stats)
        if part is None:    # else whether the whole file is empty is known once every shard is read
            self.require_text(stats.source, stats.lines, stats.kept, bool(stats.num_skipped), pair)
        return rows

    def _part_bytes(self, path: str, part: Part | None, budget: int | None):
        """(data, first_byte, select, complete) of a file or a shard's part of it (see Part); with
        a `budget`, whole lines of about its first `budget` bytes (a limited read)."""
        if part is not None and part.how == "bytes" and not path.endswith(".gz"):
            try:
                with open(path, "rb") as f:
                    start, end = part.byte_range(os.fstat(f.fileno()).st_size)
                    first_byte, data, complete = read_lines(f, start, end, budget)
            except OSError as e:
                raise DataError(f"{path}: cannot read this file ({type(e).__name__}: {e}); "
                                "re-create or remove it") from None
            self.bytes_read += len(data)
            return data, first_byte, None, complete
        shared = part is not None and part.how == "lines" and part.count > 1
        if budget is not None:
            data = _read_bytes(path, budget)
            self.bytes_read += len(data)
            complete = len(data) < budget
            if not complete:
                data = data[:data.rfind(b"\n") + 1]   # whole lines only
        elif shared and self._unpacked[0] == path:
            data, complete = self._unpacked[1], True
        else:
            data, complete = _read_bytes(path), True
            self.bytes_read += len(data)
            if shared:   # this process's next shards read it too
                self._unpacked = (path, data)
        select = (lambda index: index % part.count == part.index) if shared else None   # noqa: E731
        return data, None, select, complete


_FIRST_BUDGET = 1 << 16   # bytes of the first prefix a limited read tries


def line_number(path: str, offset: int) -> int:
    """The number of the line starting at byte `offset` of a plain file: 1 + the newlines before it."""
    newlines = 0
    with open(path, "rb") as f:
        while offset > 0 and (chunk := f.read(min(offset, 1 << 20))):
            newlines += chunk.count(b"\n")
            offset -= len(chunk)
    return newlines + 1


def skip_total(reasons: dict[str, int], files: int, dropped: int) -> str:
    """The corpus origin's note on what was skipped: bad lines by reason, and files/languages dropped whole."""
    parts = []
    if sum(reasons.values()):
        parts.append(f"skipped {sum(reasons.values())} bad lines in {files} files ("
                     + ", ".join(f"{c} {r}" for r, c in reasons.items() if c) + ")")
    if dropped:
        parts.append(f"dropped {dropped} files/languages without text")
    return "; ".join(parts)


def _read_bytes(path: str, size: int = -1) -> bytes:
    """The file's bytes (its first `size` ones), decompressed when the name ends in .gz."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read(size)
        with open(path, "rb") as f:
            return f.read(size)
    except (OSError, EOFError, zlib.error) as e:
        kind = "gzip " if path.endswith(".gz") else ""
        raise DataError(f"{path}: cannot read this {kind}file ({type(e).__name__}: {e}); "
                        "re-create or remove it") from None


def corpus_dir_files(path: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """([(file, lang)], [(file, src, tgt)]) of a corpus dir's <lang>.txt[.gz] and <src>-<tgt>.tsv[.gz] files."""
    if not os.path.isdir(path):
        raise DataError(f"corpus dir {path!r} does not exist or is not a directory; "
                        f"--config.data.corpus_dir must name a directory of {EXPECTED_FILES}")
    texts, tables = [], []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not name.endswith(_CORPUS_SUFFIXES) or not os.path.isfile(full):
            continue
        bare = name.removesuffix(".gz")
        if match := _TXT_NAME.fullmatch(bare):
            texts.append((full, match.group(1)))
        elif (match := _TSV_NAME.fullmatch(bare)) and match.group(1) != match.group(2):
            tables.append((full, match.group(1), match.group(2)))
        else:
            raise DataError(f"{full}: the name is neither <lang>.txt nor <src>-<tgt>.tsv (optionally .gz) with two "
                            "different language codes like en, pt_BR or sr_Latn; rename the file or move it out "
                            "of the corpus dir")
    if not texts and not tables:
        raise DataError(f"corpus dir {path} has no usable files; expected {EXPECTED_FILES}")
    return texts, tables


def parse_files_spec(spec, field: str = "data.files") -> list[tuple[str, list[str]]]:
    """`data.files` (or another field of its syntax, named in errors) as [(key, [pattern, ...])]; key
    is a language (text files) or `<src>-<tgt>` (TSV files).

    String form: "en:/data/en/*.txt,/x/en2.txt.gz;sw:/data/sw.txt;en-sw:/data/en-sw.tsv"
    (entries separated by ";", files or globs of one entry by ","), or a dict / ConfigDict
    {"en": "/data/en/*.txt,/x/en2.txt.gz", "en-sw": ["/data/en-sw.tsv"]} in a config file.
    """
    if not spec:
        return []
    if isinstance(spec, str):
        entries = []
        for entry in spec.split(";"):
            if not entry.strip():
                continue
            key, sep, patterns = entry.partition(":")
            if not sep:
                raise ConfigError(f"config field `{field}`: entry {entry.strip()!r} has no ':'; use "
                                  "\"<lang>:<file or glob>,...;<src>-<tgt>:<tsv file>,...\", e.g. "
                                  "\"en:/data/en/*.txt.gz;sw:/data/sw.txt\"")
            entries.append((key.strip(), patterns))
    elif hasattr(spec, "items"):
        entries = list(spec.items())
    else:
        raise ConfigError(f"config field `{field}`: got {type(spec).__name__}; use a string "
                          "\"<lang>:<file or glob>,...;...\" or a dict {lang: [files or globs]}")
    parsed, seen = [], set()
    for key, patterns in entries:
        if isinstance(patterns, str):
            patterns = patterns.split(",")
        patterns = [p.strip() for p in patterns if p.strip()]
        pair = _TSV_KEY.fullmatch(key)
        if not (_LANG_KEY.fullmatch(key) or (pair and pair.group(1) != pair.group(2))):
            raise ConfigError(f"config field `{field}`: {key!r} is neither a language code (en, pt_BR, "
                              "sr_Latn) nor a pair of two different ones (en-de)")
        if not patterns:
            raise ConfigError(f"config field `{field}`: {key!r} names no file")
        if key in seen:
            raise ConfigError(f"config field `{field}`: {key!r} appears twice; list all its files in one entry")
        seen.add(key)
        parsed.append((key, patterns))
    return parsed


def resolve_files(spec, field: str = "data.files") -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Expands `data.files` (or `field`) to ([(file, lang)], [(file, src, tgt)]); a missing file or empty
    glob raises."""
    texts, tables = [], []
    for key, patterns in parse_files_spec(spec, field):
        for pattern in patterns:
            if glob.has_magic(pattern):
                paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
                if not paths:
                    raise DataError(f"{field}: {key}: {pattern!r} matches no file")
            elif not os.path.isfile(pattern):
                raise DataError(f"{field}: {key}: {pattern!r} does not exist or is not a file")
            else:
                paths = [pattern]
            pair = _TSV_KEY.fullmatch(key)
            if pair:
                tables.extend((p, pair.group(1), pair.group(2)) for p in paths)
            else:
                texts.extend((p, key) for p in paths)
    return texts, tables
