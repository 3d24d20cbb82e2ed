"""The corpus of a config as units that S shards divide, read shard by shard.

A unit is one file, TFDS dataset or prepared split. Shard s of S gets, of each unit:
- a plain `.txt` / `.tsv` file: the lines that start in its byte range s (shards.read_lines);
- `.gz` files, which cannot seek: when a language (or pair) has at least S of them, file i
  goes whole to shard i mod S; otherwise shard s keeps lines s, s + S, ... of every file,
  so each process decompresses all of those files;
- a TFDS dataset or a split of a prepared corpus: `tfds.even_splits(split, S)[s]`;
- the gettext catalogs (the built-in corpus, used when no source is set): every process reads
  them all and shard s keeps sentences s, s + S, ... of each language.
A shard's text of a language is its text-file lines in unit order, then the pairs' sides
(so a sentence cap keeps the monolingual text). Nothing here depends on the process count.
"""
import dataclasses
import types
from typing import Any, Callable

import numpy as np

from xlm_jax.data import sources
from xlm_jax.data.shards import Part
from xlm_jax.errors import DataError

COUNT_COLUMNS = 2 + len(sources.SKIP_REASONS)   # per unit: lines read, kept, skipped by reason


@dataclasses.dataclass(frozen=True)
class Unit:
    kind: str                  # "txt", "tsv" (files), "tfds" (a dataset by name), "prepared" (a split of ours)
    name: str                  # path, `name@split` or split
    langs: tuple[str, ...]     # (lang,) or (src, tgt)
    how: str = "bytes"         # Part.how; TFDS units ignore it
    index: int = 0             # "whole": the file's index among its language's .gz files; "tfds": the source's

    def part(self, shard: int, shards: int) -> Part | None:
        """What shard `shard` reads of this unit; None when nothing (another shard's whole file)."""
        if self.how == "whole" and self.index % shards != shard:
            return None
        return Part(shard, shards, self.how)


@dataclasses.dataclass
class CorpusPlan:
    num_shards: int
    units: list[Unit]
    languages: list[str]        # every language some unit may hold text of, sorted
    origin: str                 # for logs
    data_config: Any
    tfds: dict | None = None    # tfds_builder.check_tfds_sources: the opened datasets and prepared corpus
    gettext: sources.Corpus | None = None   # the built-in corpus, read whole


def plan_corpus(data_config, num_shards: int) -> CorpusPlan:
    """Every source of `data_config` as units, checked to exist before anything is read.

    Sources, merged in this order: `data.corpus_dir`, `data.files`, `data.prepared_corpus`
    (a local corpus prepared as TFDS records by xlm_jax.data.tfds_builder) and
    `data.tfds_datasets`; the gettext catalogs when all are empty.
    """
    corpus_dir = getattr(data_config, "corpus_dir", "")
    files = getattr(data_config, "files", "")
    prepared = getattr(data_config, "prepared_corpus", "")
    tfds_names = getattr(data_config, "tfds_datasets", "")
    wanted = _wanted_languages(data_config)
    if not (corpus_dir or files or prepared or tfds_names):
        from xlm_jax.data.gettext_corpus import read_gettext_catalogs
        corpus = read_gettext_catalogs(min_languages=0 if wanted else data_config.min_languages)
        if wanted:
            _check_present(wanted, corpus.mono, corpus.origin)
            corpus = sources.Corpus({lang: s for lang, s in corpus.mono.items() if lang in wanted},
                                    {pair: p for pair, p in corpus.parallel.items() if set(pair) <= wanted},
                                    f"{corpus.origin}, languages {', '.join(sorted(wanted))} (data.languages)")
        return CorpusPlan(num_shards, [], sorted(corpus.mono), corpus.origin, data_config, gettext=corpus)
    texts, tables, origins = [], [], []
    if corpus_dir:
        texts, tables = sources.corpus_dir_files(corpus_dir)
        origins.append(f"corpus dir {corpus_dir}")
    if files:
        more_texts, more_tables = sources.resolve_files(files)
        texts, tables = texts + more_texts, tables + more_tables
        origins.append(f"data.files ({len(more_texts) + len(more_tables)} files)")
    opened = None
    if prepared or tfds_names:
        from xlm_jax.data import tfds_builder   # TFDS is imported only by runs that use it
        opened = tfds_builder.check_tfds_sources(data_config)
        origins.append(tfds_builder.describe(data_config))
    files_of = [(path, (lang,), "txt") for path, lang in texts] + [(path, (src, tgt), "tsv")
                                                                    for path, src, tgt in tables]
    units = {"mono": [], "pairs": []}
    for unit in file_units(files_of, num_shards):
        units["mono" if unit.kind == "txt" else "pairs"].append(unit)
    if opened:
        if opened["prepared"] is not None:
            for split in sorted(opened["prepared"].info.splits):
                langs = tuple(split.split("-")) if tfds_builder.is_pair_split(split) else (split,)
                units["pairs" if len(langs) == 2 else "mono"].append(Unit("prepared", split, langs))
        for i, (source, _) in enumerate(opened["datasets"]):
            units["mono"].append(Unit("tfds", f"{source.name}@{source.split}", (source.lang,), index=i))
    ordered = units["mono"] + units["pairs"]
    if wanted:   # a pair file is read only when both of its languages are wanted
        _check_present(wanted, {lang for unit in ordered for lang in unit.langs}, " + ".join(origins))
        ordered = [unit for unit in ordered if set(unit.langs) <= wanted]
        origins.append(f"languages {', '.join(sorted(wanted))} (data.languages)")
    languages = sorted({lang for unit in ordered for lang in unit.langs})
    return CorpusPlan(num_shards, ordered, languages, " + ".join(origins), data_config, tfds=opened)


def file_units(files_of: list[tuple[str, tuple[str, ...], str]], num_shards: int) -> list[Unit]:
    """Units of [(path, langs, "txt" | "tsv")], in order: a .gz file goes whole to one shard when its
    language (or pair) has at least S of them, else every shard keeps every S-th of its lines."""
    gz = {}
    for path, langs, _ in files_of:
        if path.endswith(".gz"):
            gz.setdefault(langs, []).append(path)
    units = []
    for path, langs, kind in files_of:
        how, index = "bytes", 0
        if path.endswith(".gz"):
            how = "whole" if len(gz[langs]) >= num_shards else "lines"
            index = gz[langs].index(path)
        units.append(Unit(kind, path, langs, how, index))
    return units


def plan_synthetic_pairs(data_config, num_shards: int) -> CorpusPlan | None:
    """`data.synthetic_pairs` (xlm_jax.data.synthetic) as a plan of its own, checked to exist: TSV
    units sharded like data.files' pair files, kept out of the corpus (no MLM text, no tokenizer
    sample); None when the field is empty."""
    spec = getattr(data_config, "synthetic_pairs", "")
    if not spec:
        return None
    _, tables = sources.resolve_files(spec, "data.synthetic_pairs")
    units = file_units([(path, (src, tgt), "tsv") for path, src, tgt in tables], num_shards)
    languages = sorted({lang for unit in units for lang in unit.langs})
    return CorpusPlan(num_shards, units, languages, f"data.synthetic_pairs ({len(units)} files)", data_config)


def _wanted_languages(data_config) -> set[str]:
    """`data.languages` as a set; empty: every language of the sources."""
    return {lang.strip() for lang in getattr(data_config, "languages", "").split(",") if lang.strip()}


def _check_present(wanted: set[str], available, origin: str) -> None:
    missing = sorted(wanted - set(available))
    if missing:
        raise DataError(f"config field `data.languages`: {', '.join(missing)} not in {origin}; its languages: "
                        f"{', '.join(sorted(available))}")


def plan_pairs(plan: CorpusPlan) -> list[tuple[str, str]]:
    """Every (src, tgt) some unit may hold translation pairs of, sorted: the same on every process."""
    if plan.gettext is not None:
        return sorted(pair for pair, rows in plan.gettext.parallel.items() if rows)
    return sorted({unit.langs for unit in plan.units if len(unit.langs) == 2})


def read_shards(plan: CorpusPlan, shards, reader: sources.Reader, *, limit: int | None = None,
                languages: set[str] | None = None,
                pairs: set[tuple[str, str]] | None = None) -> tuple[dict[int, sources.Corpus], np.ndarray]:
    """({shard: its Corpus}, int64 [units, COUNT_COLUMNS]: what reading each unit's parts did).

    `limit` reads the first `limit` rows of each part only: a language's first k <= limit
    sentences in a shard are then the same as with all of them. `languages` and `pairs`
    read only the units of those languages (any side) or of those (src, tgt) pairs.
    """
    counts = np.zeros((len(plan.units), COUNT_COLUMNS), np.int64)
    if plan.gettext is not None:
        return {s: _gettext_shard(plan, s, limit) for s in shards}, counts
    texts = {s: {} for s in shards}
    parallel = {s: {} for s in shards}
    for u, unit in enumerate(plan.units):
        if not _wanted(unit, languages, pairs):
            continue
        for s in shards:
            part = unit.part(s, plan.num_shards)
            if part is None:
                continue
            rows = _read_part(plan, unit, part, reader, limit)
            stats = reader.stats[-1]
            counts[u] += [stats.lines, stats.kept, *(stats.skipped.get(r, [0])[0] for r in sources.SKIP_REASONS)]
            (parallel if len(unit.langs) == 2 else texts)[s].setdefault(unit.langs, []).extend(rows)
    return {s: _assemble(plan, s, texts[s], parallel[s]) for s in shards}, counts


def _wanted(unit: Unit, languages: set[str] | None, pairs: set[tuple[str, str]] | None) -> bool:
    """Does read_shards read this unit: no filter, or one of its languages or its pair asked for."""
    if languages is None and pairs is None:
        return True
    return bool(languages and not languages.isdisjoint(unit.langs)) or bool(pairs and unit.langs in pairs)


def _read_part(plan: CorpusPlan, unit: Unit, part: Part, reader: sources.Reader, limit: int | None) -> list:
    if unit.kind == "txt":
        return reader.read_txt(unit.name, part, limit)
    if unit.kind == "tsv":
        return reader.read_tsv(unit.name, *unit.langs, part, limit)
    from xlm_jax.data import tfds_builder
    if unit.kind == "prepared":
        return tfds_builder.read_prepared_part(plan.tfds["prepared"], unit.name, part, reader, limit)
    source, _ = plan.tfds["datasets"][unit.index]
    return tfds_builder.read_dataset_part(source, plan.data_config, part, reader, limit)


def shard_cap(data_config, shard: int, shards: int) -> int | None:
    """Shard s's share of `data.max_sentences_per_language` (the shares add up to it); None: no cap."""
    cap = data_config.max_sentences_per_language
    return cap * (shard + 1) // shards - cap * shard // shards if cap else None


def _assemble(plan: CorpusPlan, shard: int, texts: dict, pairs: dict) -> sources.Corpus:
    """Both sides of the pairs feed the languages' MLM text too, after the monolingual text; then the cap."""
    mono = {langs[0]: list(sentences) for langs, sentences in texts.items()}
    for (src, tgt), rows in pairs.items():
        mono.setdefault(src, []).extend(s for s, _ in rows)
        mono.setdefault(tgt, []).extend(t for _, t in rows)
    cap = shard_cap(plan.data_config, shard, plan.num_shards)
    return sources.Corpus(mono={lang: s[:cap] for lang, s in mono.items()},
                          parallel={langs: p[:cap] for langs, p in pairs.items()}, origin=plan.origin)


def _gettext_shard(plan: CorpusPlan, shard: int, limit: int | None) -> sources.Corpus:
    step, cap = plan.num_shards, shard_cap(plan.data_config, shard, plan.num_shards)
    end = min(n for n in (cap, limit, None) if n is not None) if cap or limit else None
    corpus = plan.gettext
    return sources.Corpus(mono={lang: s[shard::step][:end] for lang, s in corpus.mono.items()},
                          parallel={k: p[shard::step][:end] for k, p in corpus.parallel.items()}, origin=plan.origin)


def check_counts(plan: CorpusPlan, counts: np.ndarray, sentences: dict[str, int], reader: sources.Reader) -> tuple[
        list[str], str]:
    """(languages with text, origin for the logs), from the counts of every shard of every unit and
    the sentences of each language: a unit or language without text raises, or under
    data.on_bad_line=skip is dropped and logged; too few languages raise."""
    for unit, (lines, kept, *skipped) in zip(plan.units, counts):
        if unit.kind == "tfds" and not kept:
            reader.drop(f"TFDS {unit.name.replace('@', '[')}] has no text")
        elif unit.kind == "prepared" and not lines:
            reader.drop(f"{plan.tfds['prepared'].data_dir}: split {unit.name} has no examples")
        elif unit.kind in ("txt", "tsv"):
            reader.require_text(unit.name, lines, kept, any(skipped), unit.langs if unit.kind == "tsv" else None)
    for lang in plan.languages:
        if not sentences.get(lang):
            reader.drop(f"language {lang} has no text in {plan.origin}")
    languages = [lang for lang in plan.languages if sentences.get(lang)]
    note = sources.skip_total(dict(zip(sources.SKIP_REASONS, counts[:, 2:].sum(0).tolist())),
                              int(np.count_nonzero(counts[:, 2:].any(1))), len(reader.dropped))
    origin = f"{plan.origin}{f' ({note})' if note else ''}"
    minimum = plan.data_config.min_languages
    if len(languages) < minimum:
        raise DataError(f"{origin} has text in {len(languages)} language(s) ({', '.join(languages)}), "
                        f"fewer than data.min_languages={minimum}; add <lang>.txt files "
                        "for more languages or lower --config.data.min_languages")
    return languages, origin


def load_corpus(data_config, log: Callable[[str], None] | None = None,
                reader: sources.Reader | None = None) -> sources.Corpus:
    """The whole corpus in one process (one shard), with every check; tools and tests use it."""
    reader = reader or sources.Reader.from_config(data_config, log)
    plan = plan_corpus(data_config, 1)
    corpora, counts = read_shards(plan, [0], reader)
    corpus = corpora[0]
    languages, corpus.origin = check_counts(plan, counts, {k: len(v) for k, v in corpus.mono.items()}, reader)
    corpus.mono = {lang: corpus.mono[lang] for lang in languages}
    corpus.parallel = {pair: rows for pair, rows in corpus.parallel.items() if rows}
    return corpus


def read_corpus_dir(path: str, reader: sources.Reader | None = None) -> sources.Corpus:
    """load_corpus of one dir of <lang>.txt[.gz] and <src>-<tgt>.tsv[.gz] files (others, README.md
    and the like, are ignored), with the bad-line policy of `reader`."""
    config = types.SimpleNamespace(corpus_dir=path, max_sentences_per_language=0, min_languages=0)
    return load_corpus(config, reader=reader or sources.Reader())
