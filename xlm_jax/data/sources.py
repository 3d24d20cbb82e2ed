"""Where pretraining text comes from: a directory of plain files, or this machine's gettext catalogs.

Both give a `Corpus` of per-language sentences (for MLM) and sentence pairs (for TLM).
The gettext catalogs are the zero-setup corpus: every Linux machine ships real human
translations of its programs' messages in ~100-200 locales, parallel by construction.
"""
import dataclasses
import gettext
import os
import re
import struct

from xlm_jax.errors import DataError

DEFAULT_LOCALE_DIRS = ("/usr/share/locale", "/usr/local/share/locale", "/usr/share/locale-langpack")

_LANG = r"[a-z]{2,3}(?:_[A-Za-z0-9]{2,8})*"
_TXT_NAME = re.compile(rf"({_LANG})\.txt")
_TSV_NAME = re.compile(rf"({_LANG})-({_LANG})\.tsv")
_EXPECTED_FILES = ("<lang>.txt files (one sentence or paragraph per line, e.g. en.txt, pt_BR.txt) "
                   "and/or <src>-<tgt>.tsv files (two tab-separated columns, e.g. en-de.tsv)")

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


def _read_lines(path: str) -> list[str]:
    """All lines of a UTF-8 file, line endings removed; errors name the file, line and byte."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise DataError(f"{path} is empty; remove it or fill it with one sentence per line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: byte offset {e.start} (0x{data[e.start]:02x}) is not valid "
                        "UTF-8; convert the file to UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`)") from None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _read_txt(path: str) -> list[str]:
    sentences = [line for line in _read_lines(path) if line.strip()]   # blank lines separate documents
    if not sentences:
        raise DataError(f"{path} has no non-empty line; remove it or fill it with one sentence per line")
    return sentences


def _read_tsv(path: str, src: str, tgt: str) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            raise DataError(f"{path}, line {number}: found {len(columns)} tab-separated column(s), expected 2 "
                            f"(<{src} sentence>TAB<{tgt} sentence>)")
        if not columns[0].strip() or not columns[1].strip():
            raise DataError(f"{path}, line {number}: one side of the pair is empty; "
                            "every line needs text in both columns")
        pairs.append((columns[0], columns[1]))
    if not pairs:
        raise DataError(f"{path} has no non-empty line; remove it or fill it with <{src}>TAB<{tgt}> pairs")
    return pairs


def read_corpus_dir(path: str) -> Corpus:
    """Reads <lang>.txt and <src>-<tgt>.tsv files; both sides of a TSV feed the languages' MLM text too.

    Text files come first (sorted by name), then the pairs' sides, so a sentence cap keeps
    the monolingual text. Files that are neither .txt nor .tsv (README.md, ...) are ignored.
    """
    if not os.path.isdir(path):
        raise DataError(f"corpus dir {path!r} does not exist or is not a directory; "
                        f"--config.data.corpus_dir must name a directory of {_EXPECTED_FILES}")
    texts, tables = [], []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not name.endswith((".txt", ".tsv")) or not os.path.isfile(full):
            continue
        if match := _TXT_NAME.fullmatch(name):
            texts.append((full, match.group(1)))
        elif (match := _TSV_NAME.fullmatch(name)) and match.group(1) != match.group(2):
            tables.append((full, match.group(1), match.group(2)))
        else:
            raise DataError(f"{full}: the name is neither <lang>.txt nor <src>-<tgt>.tsv with two different "
                            "language codes like en, pt_BR or sr_Latn; rename the file or move it out "
                            "of the corpus dir")
    if not texts and not tables:
        raise DataError(f"corpus dir {path} has no usable files; expected {_EXPECTED_FILES}")
    mono: dict[str, list[str]] = {}
    parallel: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for full, lang in texts:
        mono.setdefault(lang, []).extend(_read_txt(full))
    for full, src, tgt in tables:
        pairs = _read_tsv(full, src, tgt)
        parallel[(src, tgt)] = pairs
        mono.setdefault(src, []).extend(s for s, _ in pairs)
        mono.setdefault(tgt, []).extend(t for _, t in pairs)
    return Corpus(mono=mono, parallel=parallel, origin=f"corpus dir {path}")


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


def load_corpus(data_config) -> Corpus:
    """The corpus a run trains on: `data.corpus_dir`, or the gettext catalogs when it is empty."""
    if data_config.corpus_dir:
        corpus = read_corpus_dir(data_config.corpus_dir)
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
