"""Translation pairs for the evaluators that compare the two sides (retrieval, alignment).

Inputs (an evaluator's `data` option, auto-detected): a Tatoeba directory
(tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng, as XTREME downloads them from
LASER); line-aligned files "a.de|b.en"; `<src>-<tgt>.tsv` files with two columns;
several pairs or TSVs comma-separated. The English side (a language named en/eng, else
the second side) is the pivot every pair is compared with.
"""
import dataclasses
import functools
import os
import re

from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import inputs

# the 36 languages of XTREME's Tatoeba task
XTREME_TATOEBA = ("afr", "ara", "ben", "bul", "cmn", "deu", "ell", "est", "eus", "fin", "fra", "heb",
                  "hin", "hun", "ind", "ita", "jav", "jpn", "kat", "kaz", "kor", "mal", "mar", "nld",
                  "pes", "por", "rus", "spa", "swh", "tam", "tel", "tgl", "tha", "tur", "urd", "vie")
ENGLISH = ("en", "eng")


@dataclasses.dataclass
class ParallelSet:
    """Line-aligned sentences of one language pair: source[i] translates target[i].

    target is the English (pivot) side; `language` names the pair in the results;
    source_language and target_language are each side's code as the data names it ("deu", "eng").
    """
    language: str
    source: list[str]
    target: list[str]
    files: tuple[str, ...]          # () for the built-in corpus's pairs
    source_language: str
    target_language: str


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def read_tatoeba(directory: str, languages: list[str]) -> list[ParallelSet]:
    """XTREME's Tatoeba files; no languages = the XTREME languages present in `directory`."""
    def path(lang, side):
        return os.path.join(directory, f"tatoeba.{lang}-eng.{side}")

    if not languages:
        languages = [lang for lang in XTREME_TATOEBA if os.path.isfile(path(lang, lang))]
        if not languages:
            raise DataError(f"{directory}: no Tatoeba files of the XTREME languages "
                            f"(tatoeba.<xxx>-eng.<xxx>, e.g. {os.path.basename(path('deu', 'deu'))})")
    sets = []
    for lang in languages:
        files = (path(lang, lang), path(lang, "eng"))
        source, target = (inputs.read_lines(f, f"Tatoeba file of language {lang!r}") for f in files)
        inputs.check_aligned(files[0], source, files[1], target)
        sets.append(ParallelSet(lang, source, target, files, lang, "eng"))
    return sets


def _oriented(names: tuple[str, str], first: list, second: list, files: tuple) -> ParallelSet:
    """A ParallelSet with the English side (en/eng, else the second) as target, named by the other."""
    if names[0] in ENGLISH and names[1] not in ENGLISH:
        return ParallelSet(names[1], second, first, files, names[1], names[0])
    return ParallelSet(names[0] if names[1] in ENGLISH else "-".join(names), first, second, files, *names)


def read_line_pair(entry: str, names: tuple[str, str] | None) -> ParallelSet:
    """Two line-aligned files "a.de|b.en"; languages from the extensions unless named."""
    files = tuple(part.strip() for part in entry.split("|"))
    if len(files) != 2 or not all(files):
        raise ConfigError(f"{entry!r}: a file pair is written 'path/a.de|path/b.en'")
    names = names or tuple(os.path.splitext(f)[1].lstrip(".") for f in files)
    if not all(names):
        raise ConfigError(f"{entry!r}: cannot tell the languages from the file extensions; name them "
                          "(src-tgt) in the `languages` option")
    source, target = (inputs.read_lines(f, "line-aligned file") for f in files)
    inputs.check_aligned(files[0], source, files[1], target)
    return _oriented(names, source, target, files)


def read_tsv(path: str, names: tuple[str, str] | None) -> ParallelSet:
    """A `<src>-<tgt>.tsv` file: one pair per line, src<TAB>tgt."""
    match = re.fullmatch(r"([^-.]+)-([^-.]+)\.tsv", os.path.basename(path))
    if not names and not match:
        raise ConfigError(f"{path}: cannot tell the languages from the name (expected <src>-<tgt>.tsv); "
                          "name them (src-tgt) in the `languages` option")
    rows = []
    for number, line in enumerate(inputs.read_lines(path, "parallel TSV file"), 1):
        columns = line.split("\t")
        if len(columns) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns (source<TAB>target), "
                            f"found {len(columns)}")
        rows.append(columns)
    source, target = (list(side) for side in zip(*rows))
    return _oriented(names or match.groups(), source, target, (path,))


BUILTIN_HELDOUT = "builtin-heldout:"
BUILTIN_HELDOUT_PAIRS = 1000     # read per language; the evaluator's max_pairs takes the first ones


@functools.cache
def _builtin_heldout_pairs(languages: tuple[str, ...], after: int) -> dict:
    """Read once per process: the catalogs take seconds, and every arm of a study checks its inputs."""
    from xlm_jax.data.gettext_corpus import heldout_pairs, read_gettext_catalogs
    return heldout_pairs(read_gettext_catalogs(), list(languages), after, BUILTIN_HELDOUT_PAIRS)


def read_builtin_heldout(data: str, languages: list[str]) -> list[ParallelSet]:
    """`builtin-heldout:N` (see the module docstring): one set per language, English the pivot."""
    after = data[len(BUILTIN_HELDOUT):]
    if not after.isdigit() or not int(after):
        raise ConfigError(f"{data!r}: write builtin-heldout:N, N the data.max_sentences_per_language of the "
                          "runs it evaluates (e.g. builtin-heldout:5000)")
    if not languages:
        raise ConfigError(f"{data!r}: name the built-in corpus's languages to evaluate in `languages` "
                          "(gettext codes, e.g. de,fr,zh_CN)")
    pairs = _builtin_heldout_pairs(tuple(languages), int(after))
    empty = [lang for lang, rows in pairs.items() if not rows]
    if empty:
        raise DataError(f"{data}: the built-in corpus has no unread en-xx pairs past the first {after} for "
                        f"{', '.join(empty)}")
    return [ParallelSet(lang, [xx for _, xx in rows], [en for en, _ in rows], (), lang, "en")
            for lang, rows in pairs.items()]


def read_parallel_sets(data: str, languages: str) -> list[ParallelSet]:
    """The inputs named by the `data` and `languages` options (see the module docstring)."""
    entries, names = _split_list(data), _split_list(languages)
    if data.startswith(BUILTIN_HELDOUT):
        return read_builtin_heldout(data, names)
    if len(entries) == 1 and os.path.isdir(entries[0]):
        return read_tatoeba(entries[0], names)
    if len(entries) == 1 and not os.path.exists(entries[0]) and "|" not in entries[0] \
            and not entries[0].endswith(".tsv"):
        raise DataError(f"{entries[0]}: not found (a Tatoeba directory{' of ' + languages if languages else ''}, a .tsv "
                        f"file or a file pair 'a.de|b.en'; relative paths are taken from where the command runs, "
                        f"{os.getcwd()})")
    if names and len(names) != len(entries):
        raise ConfigError(f"{len(names)} language pair(s) named for {len(entries)} input(s): name one "
                          "src-tgt pair per input, or none")
    sets = []
    for i, entry in enumerate(entries):
        pair = tuple(names[i].split("-")) if names else None
        if pair is not None and len(pair) != 2:
            raise ConfigError(f"{names[i]!r}: name a language pair as src-tgt, e.g. de-en")
        if "|" in entry:
            sets.append(read_line_pair(entry, pair))
        elif entry.endswith(".tsv"):
            sets.append(read_tsv(entry, pair))
        elif os.path.isdir(entry):
            raise ConfigError(f"{entry}: a Tatoeba directory must be the only input")
        else:
            raise DataError(f"{entry}: not found, or neither a Tatoeba directory, a .tsv file nor a "
                            "file pair 'a.de|b.en'")
    duplicates = sorted({s.language for s in sets if [t.language for t in sets].count(s.language) > 1})
    if duplicates:
        raise ConfigError(f"language pair(s) {', '.join(duplicates)} given twice")
    return sets
