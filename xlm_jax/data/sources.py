"""Where pretraining text comes from: a directory of plain files, or this machine's gettext catalogs.

Both give a `Corpus` of per-language sentences (for MLM) and sentence pairs (for TLM).
The gettext catalogs are the zero-setup corpus: every Linux machine ships real human
translations of its programs' messages in ~100-200 locales, parallel by construction.
"""
import dataclasses
import gettext
import glob
import gzip
import logging
import os
import re
import struct
import zlib
from typing import Callable

from xlm_jax.errors import ConfigError, DataError

DEFAULT_LOCALE_DIRS = ("/usr/share/locale", "/usr/local/share/locale", "/usr/share/locale-langpack")

_LANG = r"[a-z]{2,3}(?:_[A-Za-z0-9]{2,8})*"
_TXT_NAME = re.compile(rf"({_LANG})\.txt")
_TSV_NAME = re.compile(rf"({_LANG})-({_LANG})\.tsv")
_LANG_KEY = re.compile(_LANG)
_TSV_KEY = re.compile(rf"({_LANG})-({_LANG})")
_CORPUS_SUFFIXES = (".txt", ".tsv", ".txt.gz", ".tsv.gz")
_EXPECTED_FILES = ("<lang>.txt files (one sentence or paragraph per line, e.g. en.txt, pt_BR.txt) "
                   "and/or <src>-<tgt>.tsv files (two tab-separated columns, e.g. en-de.tsv), "
                   "optionally gzip-compressed (en.txt.gz)")
BAD_LINE_POLICIES = ("error", "skip")     # data.on_bad_line
DEFAULT_MAX_LINE_CHARS = 100_000          # data.max_line_chars

# gettext locale variants that name a script; other variants (ca@valencia, sr@ije) are
# spellings of the same language in the same script and merge into it.
_SCRIPT_VARIANTS = {"latin": "Latn", "latn": "Latn", "cyrillic": "Cyrl", "iqtelif": "Latn"}
_LOCALE_NAME = re.compile(r"([a-z]{2,3})(?:_([A-Za-z]{2,4}))?")
# printf / strftime / %(name)s conversions and {0} / {name} fields: placeholders, not words.
_FORMAT_SPEC = re.compile(r"%(?:\d+\$|\([^)]*\))?[-+ #0'_^]*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|ll|[hlLqjzt])?[A-Za-z%]"
                          r"|\{[^{}]*\}")
_LETTER = re.compile(r"[^\W\d_]")


@dataclasses.dataclass
class Corpus:
    mono: dict[str, list[str]]                               # language -> sentences for MLM
    parallel: dict[tuple[str, str], list[tuple[str, str]]]   # (src, tgt) -> pairs for TLM
    origin: str                                              # for logs


@dataclasses.dataclass
class ReadStats:
    """What reading one source did with its lines: kept, empty (ignored), skipped by reason."""
    source: str
    lines: int = 0
    kept: int = 0
    empty: int = 0
    skipped: dict[str, list[int]] = dataclasses.field(default_factory=dict)   # reason -> [count, first line]

    def skip(self, reason: str, line: int) -> None:
        count = self.skipped.setdefault(reason, [0, line])
        count[0] += 1

    @property
    def num_skipped(self) -> int:
        return sum(count for count, _ in self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{count} {reason} ({'first at ' if count > 1 else ''}line {first})"
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

    @classmethod
    def from_config(cls, data_config, log=None) -> "Reader":
        return cls(getattr(data_config, "on_bad_line", "error"),
                   getattr(data_config, "max_line_chars", DEFAULT_MAX_LINE_CHARS), log)

    def bad(self, stats: ReadStats, reason: str, line: int, message: str) -> None:
        """A bad line: raise under "error", count under "skip"."""
        if self.on_bad_line == "error":
            raise DataError(f"{message} (or set --config.data.on_bad_line=skip to skip and count such lines)")
        stats.skip(reason, line)

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

    def finish_file(self, stats: ReadStats, data: bytes, kept: int, expected: str) -> None:
        """`finish` for a file, which is dropped (see `drop`) when it held no usable line;
        `expected` says what it should hold."""
        stats.kept = kept
        self.finish(stats)
        if not data:
            self.drop(f"{stats.source} is empty; remove it or fill it with {expected}")
        elif not kept:
            left = " left after skipping bad lines" if stats.num_skipped else ""
            self.drop(f"{stats.source} has no non-empty line{left}; remove it or fill it with {expected}")

    def total(self) -> str:
        """One line for the corpus origin: lines skipped over all files, and what was dropped whole."""
        skipped = sum(s.num_skipped for s in self.stats)
        parts = []
        if skipped:
            reasons: dict[str, int] = {}
            for s in self.stats:
                for reason, (count, _) in s.skipped.items():
                    reasons[reason] = reasons.get(reason, 0) + count
            files = sum(1 for s in self.stats if s.num_skipped)
            parts.append(f"skipped {skipped} bad lines in {files} files ("
                         + ", ".join(f"{c} {r}" for r, c in reasons.items()) + ")")
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} files/languages without text")
        return "; ".join(parts)

    def lines(self, data: bytes, stats: ReadStats, where: str, first_line: int = 1):
        """(line number, text) of each non-empty, decodable line of `data`, within max_line_chars.

        `where` names the source in messages ("path" or "path, example 3"); a UTF-8 BOM and
        CR of CRLF endings are removed.
        """
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            texts = data.decode("utf-8").split("\n")
            raw = None
        except UnicodeDecodeError as e:
            if self.on_bad_line == "error":
                line = first_line + data.count(b"\n", 0, e.start)
                raise DataError(f"{where}, line {line}: byte offset {e.start} (0x{data[e.start]:02x}) is not valid "
                                "UTF-8; convert the file to UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`) or set "
                                "--config.data.on_bad_line=skip to skip and count such lines") from None
            raw, texts = data.split(b"\n"), None
        count = len(texts if raw is None else raw)
        if (texts[-1] == "" if raw is None else raw[-1] == b""):
            count -= 1              # the newline ending the last line does not start another
        for index in range(count):
            number = first_line + index
            stats.lines += 1
            if raw is None:
                text = texts[index]
            else:
                try:
                    text = raw[index].decode("utf-8")
                except UnicodeDecodeError:
                    stats.skip("undecodable", number)
                    continue
            text = text.removesuffix("\r")
            if not text.strip():
                stats.empty += 1
                continue
            if self.max_line_chars and len(text) > self.max_line_chars:
                self.bad(stats, "over-long", number,
                         f"{where}, line {number}: {len(text)} characters, more than data.max_line_chars="
                         f"{self.max_line_chars}; split the line or raise --config.data.max_line_chars")
                continue
            yield number, text

    def read_txt(self, path: str) -> list[str]:
        """The non-empty lines of a text file (.gz: gzip-compressed)."""
        stats = ReadStats(path)
        data = _read_bytes(path)
        sentences = [text for _, text in self.lines(data, stats, path)]
        self.finish_file(stats, data, len(sentences), "one sentence per line")
        return sentences

    def read_tsv(self, path: str, src: str, tgt: str) -> list[tuple[str, str]]:
        """The pairs of a two-column TSV file (.gz: gzip-compressed)."""
        stats = ReadStats(path)
        data = _read_bytes(path)
        pairs = []
        for number, line in self.lines(data, stats, path):
            columns = line.split("\t")
            if len(columns) != 2:
                self.bad(stats, "with a wrong column count", number,
                         f"{path}, line {number}: found {len(columns)} tab-separated column(s), expected 2 "
                         f"(<{src} sentence>TAB<{tgt} sentence>)")
            elif not columns[0].strip() or not columns[1].strip():
                self.bad(stats, "with an empty side", number,
                         f"{path}, line {number}: one side of the pair is empty; every line needs text in both "
                         "columns")
            else:
                pairs.append((columns[0], columns[1]))
        self.finish_file(stats, data, len(pairs), f"<{src}>TAB<{tgt}> pairs")
        return pairs


def _read_bytes(path: str) -> bytes:
    """The file's bytes, decompressed when the name ends in .gz."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        kind = "gzip " if path.endswith(".gz") else ""
        raise DataError(f"{path}: cannot read this {kind}file ({type(e).__name__}: {e}); "
                        "re-create or remove it") from None


def corpus_dir_files(path: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """([(file, lang)], [(file, src, tgt)]) of a corpus dir's <lang>.txt[.gz] and <src>-<tgt>.tsv[.gz] files."""
    if not os.path.isdir(path):
        raise DataError(f"corpus dir {path!r} does not exist or is not a directory; "
                        f"--config.data.corpus_dir must name a directory of {_EXPECTED_FILES}")
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
        raise DataError(f"corpus dir {path} has no usable files; expected {_EXPECTED_FILES}")
    return texts, tables


def read_files(texts, tables, reader: Reader) -> tuple[dict[str, list[str]], dict[tuple[str, str], list]]:
    """(mono, parallel) of text and TSV files, the text files' sentences only in mono."""
    mono: dict[str, list[str]] = {}
    parallel: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for full, lang in texts:
        mono.setdefault(lang, []).extend(reader.read_txt(full))
    for full, src, tgt in tables:
        parallel.setdefault((src, tgt), []).extend(reader.read_tsv(full, src, tgt))
    return mono, parallel


def assemble(mono, parallel, origin: str, reader: Reader) -> Corpus:
    """Both sides of the pairs feed the languages' MLM text too, after the monolingual text."""
    mono = {lang: list(sentences) for lang, sentences in mono.items()}
    for (src, tgt), pairs in parallel.items():
        mono.setdefault(src, []).extend(s for s, _ in pairs)
        mono.setdefault(tgt, []).extend(t for _, t in pairs)
    for lang in sorted(lang for lang, sentences in mono.items() if not sentences):
        reader.drop(f"language {lang} has no text in {origin}")
        del mono[lang]
    parallel = {pair: pairs for pair, pairs in parallel.items() if pairs}
    total = reader.total()
    return Corpus(mono=mono, parallel=parallel, origin=f"{origin}{f' ({total})' if total else ''}")


def read_corpus_dir(path: str, reader: Reader | None = None) -> Corpus:
    """Reads <lang>.txt[.gz] and <src>-<tgt>.tsv[.gz] files; both sides of a TSV feed the languages' MLM text too.

    Text files come first (sorted by name), then the pairs' sides, so a sentence cap keeps
    the monolingual text. Files that are neither .txt nor .tsv (README.md, ...) are ignored.
    """
    reader = reader or Reader()
    texts, tables = corpus_dir_files(path)
    mono, parallel = read_files(texts, tables, reader)
    return assemble(mono, parallel, f"corpus dir {path}", reader)


def parse_files_spec(spec) -> list[tuple[str, list[str]]]:
    """`data.files` as [(key, [pattern, ...])]; key is a language (text files) or `<src>-<tgt>` (TSV files).

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
                raise ConfigError(f"config field `data.files`: entry {entry.strip()!r} has no ':'; use "
                                  "\"<lang>:<file or glob>,...;<src>-<tgt>:<tsv file>,...\", e.g. "
                                  "\"en:/data/en/*.txt.gz;sw:/data/sw.txt\"")
            entries.append((key.strip(), patterns))
    elif hasattr(spec, "items"):
        entries = list(spec.items())
    else:
        raise ConfigError(f"config field `data.files`: got {type(spec).__name__}; use a string "
                          "\"<lang>:<file or glob>,...;...\" or a dict {lang: [files or globs]}")
    parsed, seen = [], set()
    for key, patterns in entries:
        if isinstance(patterns, str):
            patterns = patterns.split(",")
        patterns = [p.strip() for p in patterns if p.strip()]
        pair = _TSV_KEY.fullmatch(key)
        if not (_LANG_KEY.fullmatch(key) or (pair and pair.group(1) != pair.group(2))):
            raise ConfigError(f"config field `data.files`: {key!r} is neither a language code (en, pt_BR, "
                              "sr_Latn) nor a pair of two different ones (en-de)")
        if not patterns:
            raise ConfigError(f"config field `data.files`: {key!r} names no file")
        if key in seen:
            raise ConfigError(f"config field `data.files`: {key!r} appears twice; list all its files in one entry")
        seen.add(key)
        parsed.append((key, patterns))
    return parsed


def resolve_files(spec) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Expands `data.files` to ([(file, lang)], [(file, src, tgt)]); a missing file or empty glob raises."""
    texts, tables = [], []
    for key, patterns in parse_files_spec(spec):
        for pattern in patterns:
            if glob.has_magic(pattern):
                paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
                if not paths:
                    raise DataError(f"data.files: {key}: {pattern!r} matches no file")
            elif not os.path.isfile(pattern):
                raise DataError(f"data.files: {key}: {pattern!r} does not exist or is not a file")
            else:
                paths = [pattern]
            pair = _TSV_KEY.fullmatch(key)
            if pair:
                tables.extend((p, pair.group(1), pair.group(2)) for p in paths)
            else:
                texts.extend((p, key) for p in paths)
    return texts, tables


def _locale_language(locale: str) -> str | None:
    """`de` -> de, `pt_BR` -> pt_BR, `sr@latin` -> sr_Latn; None for non-locales and English variants.

    English catalogs (en_GB, en@quot, ...) are skipped: the msgids already are the English text.
    """
    base, _, variant = locale.partition("@")
    match = _LOCALE_NAME.fullmatch(base.split(".")[0])
    if not match or match.group(1) == "en":
        return None
    script = _SCRIPT_VARIANTS.get(variant.lower())
    if script is None:
        return match.group(0)
    return "_".join(part for part in (match.group(1), script, match.group(2)) if part)


def _text_lines(message: str) -> list[str]:
    """The lines of a message that carry words: not empty, not only format specifiers and punctuation."""
    lines = [message.strip()] if "\n" not in message else [line.strip() for line in message.split("\n")]
    return [line for line in lines
            if _LETTER.search(_FORMAT_SPEC.sub("", line) if "%" in line or "{" in line else line)]


def _translations(path: str):
    """(English msgid, translation) of a .mo file: context dropped, plurals by their first form."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    for key, msgstr in catalog.items():
        if isinstance(key, tuple):
            key, form = key
            if form != 0:
                continue
        msgid = key.rpartition("\x04")[2]
        if msgid and msgstr != msgid:
            yield msgid, msgstr


def _catalog_files(locale_dirs):
    """(language, path) of every `<dir>/<locale>/LC_MESSAGES/*.mo`, in sorted order."""
    for root in locale_dirs:
        if not os.path.isdir(root):
            continue
        for locale in sorted(os.listdir(root)):
            lang = _locale_language(locale)
            messages_dir = os.path.join(root, locale, "LC_MESSAGES")
            if lang is None or not os.path.isdir(messages_dir):
                continue
            for name in sorted(os.listdir(messages_dir)):
                if name.endswith(".mo"):
                    yield lang, os.path.join(messages_dir, name)


def read_gettext_catalogs(locale_dirs=DEFAULT_LOCALE_DIRS, min_languages: int = 2) -> Corpus:
    """English msgids and their translations from every `<dir>/<locale>/LC_MESSAGES/*.mo`.

    Sentences are deduplicated per language in first-seen order. A .mo file Python cannot
    parse belongs to the OS, not the user: it is skipped and counted in `origin`.
    """
    kept_msgids: dict[str, None] = {}         # in first-kept order
    mono: dict[str, dict[str, None]] = {}
    pairs: dict[str, dict[tuple[str, str], None]] = {}
    source_lines: dict[str, list[str]] = {}   # the same msgid recurs in every language
    read = unreadable = 0
    for lang, path in _catalog_files(locale_dirs):
        try:
            entries = list(_translations(path))
        except (OSError, ValueError, LookupError, struct.error):
            unreadable += 1
            continue
        read += 1
        lang_mono, lang_pairs = mono.setdefault(lang, {}), pairs.setdefault(lang, {})
        for msgid, msgstr in entries:
            source = source_lines.get(msgid)
            if source is None:
                source = source_lines[msgid] = _text_lines(msgid)
            target = _text_lines(msgstr) if source else None
            if not target:
                continue
            kept_msgids[msgid] = None
            if len(source) == len(target) == 1:    # most messages: a third faster than the general case
                lang_mono[target[0]] = None
                lang_pairs[(source[0], target[0])] = None
                continue
            lang_mono.update(dict.fromkeys(target))
            if len(source) == len(target):     # re-wrapped help texts give MLM text only
                lang_pairs.update(dict.fromkeys(zip(source, target)))
    english = dict.fromkeys(line for msgid in kept_msgids for line in source_lines[msgid])
    languages = {"en": list(english)} if english else {}
    languages.update((lang, list(sentences)) for lang, sentences in mono.items() if sentences)
    if len(languages) < min_languages:
        raise DataError(f"the gettext catalogs under {', '.join(locale_dirs)} hold text in {len(languages)} "
                        f"language(s), fewer than data.min_languages={min_languages}; pass "
                        f"--config.data.corpus_dir=DIR, a directory of {_EXPECTED_FILES}")
    skipped = f", {unreadable} unreadable .mo files skipped" if unreadable else ""
    dirs = ", ".join(d for d in locale_dirs if os.path.isdir(d))
    return Corpus(mono=languages,
                  parallel={("en", lang): list(p) for lang, p in pairs.items() if p},
                  origin=f"gettext catalogs ({dirs}: {len(languages)} languages from {read} .mo files{skipped})")


def load_corpus(data_config, log: Callable[[str], None] | None = None) -> Corpus:
    """The corpus a run trains on, read fully at data prep with every check up front.

    Sources, merged in this order: `data.corpus_dir`, `data.files`, `data.prepared_corpus`
    (a local corpus prepared as TFDS records by xlm_jax.data.tfds_builder) and
    `data.tfds_datasets`; the gettext catalogs when all are empty. Every named file, glob
    and TFDS dataset is checked to exist before the first one is read.
    """
    reader = Reader.from_config(data_config, log)
    corpus_dir = getattr(data_config, "corpus_dir", "")
    files = getattr(data_config, "files", "")
    prepared = getattr(data_config, "prepared_corpus", "")
    tfds_names = getattr(data_config, "tfds_datasets", "")
    if corpus_dir or files or prepared or tfds_names:
        texts, tables, origins = [], [], []
        if corpus_dir:
            texts, tables = corpus_dir_files(corpus_dir)
            origins.append(f"corpus dir {corpus_dir}")
        if files:
            more_texts, more_tables = resolve_files(files)
            texts, tables = texts + more_texts, tables + more_tables
            origins.append(f"data.files ({len(more_texts) + len(more_tables)} files)")
        tfds_sources = None
        if prepared or tfds_names:
            from xlm_jax.data import tfds_builder   # TFDS is imported only by runs that use it
            tfds_sources = tfds_builder.check_tfds_sources(data_config)
            origins.append(tfds_builder.describe(data_config))
        mono, parallel = read_files(texts, tables, reader)
        if tfds_sources is not None:
            tfds_builder.read_tfds_sources(tfds_sources, data_config, reader, mono, parallel)
        corpus = assemble(mono, parallel, " + ".join(origins), reader)
    else:
        corpus = read_gettext_catalogs(min_languages=data_config.min_languages)
    cap = data_config.max_sentences_per_language
    if cap:
        corpus.mono = {lang: s[:cap] for lang, s in corpus.mono.items()}
        corpus.parallel = {pair: p[:cap] for pair, p in corpus.parallel.items()}
    languages = sorted(lang for lang, s in corpus.mono.items() if s)
    if len(languages) < data_config.min_languages:
        raise DataError(f"{corpus.origin} has text in {len(languages)} language(s) ({', '.join(languages)}), "
                        f"fewer than data.min_languages={data_config.min_languages}; add <lang>.txt files "
                        "for more languages or lower --config.data.min_languages")
    return corpus
