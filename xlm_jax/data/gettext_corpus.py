"""The built-in corpus: this machine's gettext catalogs.

Every Linux machine ships real human translations of its programs' messages in ~100-200
locales, parallel by construction: the zero-setup corpus of the demo. It is small, so every
process reads all of it (xlm_jax.data.corpus gives shard s sentences s, s + S, ...).
"""
import gettext
import os
import re
import struct

from xlm_jax.data.sources import EXPECTED_FILES, Corpus
from xlm_jax.errors import DataError

DEFAULT_LOCALE_DIRS = ("/usr/share/locale", "/usr/local/share/locale", "/usr/share/locale-langpack")

# gettext locale variants that name a script; other variants (ca@valencia, sr@ije) are
# spellings of the same language in the same script and merge into it.
_SCRIPT_VARIANTS = {"latin": "Latn", "latn": "Latn", "cyrillic": "Cyrl", "iqtelif": "Latn"}
_LOCALE_NAME = re.compile(r"([a-z]{2,3})(?:_([A-Za-z]{2,4}))?")
# printf / strftime / %(name)s conversions and {0} / {name} fields: placeholders, not words.
_FORMAT_SPEC = re.compile(r"%(?:\d+\$|\([^)]*\))?[-+ #0'_^]*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|ll|[hlLqjzt])?[A-Za-z%]"
                          r"|\{[^{}]*\}")
_LETTER = re.compile(r"[^\W\d_]")


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
                        f"--config.data.corpus_dir=DIR, a directory of {EXPECTED_FILES}")
    skipped = f", {unreadable} unreadable .mo files skipped" if unreadable else ""
    dirs = ", ".join(d for d in locale_dirs if os.path.isdir(d))
    return Corpus(mono=languages,
                  parallel={("en", lang): list(p) for lang, p in pairs.items() if p},
                  origin=f"gettext catalogs ({dirs}: {len(languages)} languages from {read} .mo files{skipped})")


def heldout_pairs(corpus: Corpus, languages: list[str], after: int, limit: int) -> dict[str, list[tuple[str, str]]]:
    """{language: up to `limit` (English, translation) pairs} of the built-in corpus that a run on
    English and `languages`, capped at data.max_sentences_per_language = `after`, never reads:
    past the first `after` en-<language> pairs, and neither side among the first `after`
    sentences of any of those languages' text nor a side of their first `after` pairs (one
    msgid has several translations, and a translator may keep a msgid as it is)."""
    missing = [lang for lang in languages if not corpus.parallel.get(("en", lang))]
    if missing:
        raise DataError(f"the built-in corpus ({corpus.origin}) has no en-xx pairs for {', '.join(missing)}; "
                        f"its languages with pairs: {', '.join(sorted(lang for _, lang in corpus.parallel))}")
    trained = {line for lang in ["en", *languages] for line in corpus.mono.get(lang, [])[:after]}
    trained |= {side for lang in languages for pair in corpus.parallel[("en", lang)][:after] for side in pair}
    return {lang: [(en, xx) for en, xx in corpus.parallel[("en", lang)][after:]
                   if en not in trained and xx not in trained and "\t" not in en + xx][:limit]
            for lang in languages}
