"""TFDS corpora: published datasets by name, and a local corpus prepared once as TFDS records.

Reading (xlm_jax.data.corpus calls these when the config names TFDS sources; shard s of S
reads `tfds.even_splits(split, S)[s]` of each):
  --config.data.tfds_datasets="wiki40b/en,wiki40b/de,sw=c4/multilingual@sw"
  --config.data.tfds_data_dir=gs://bucket/tensorflow_datasets   # where they were prepared
  --config.data.prepared_corpus=/data/tfds/local_corpus/mine/1.0.0   # from `prepare_local_corpus`
An entry of `data.tfds_datasets` is `[<lang>=]<name>[@<split>]`: the language defaults to
the dataset's config name (`wiki40b/en` -> en), the split to `data.tfds_split`. Datasets are
loaded with download=False: a run never downloads, it reads what `tfds build` prepared.
Each example's `data.tfds_text_key` feature is split into lines, with the same checks as
the files of a corpus dir (data.on_bad_line, data.max_line_chars).

Preparing (once, instead of re-reading and re-checking a big corpus dir on every run):
  python -m xlm_jax.data.tfds_builder --corpus_dir=/data/corpus --data_dir=/data/tfds --name=mine
writes sharded TFRecord splits of raw text: one split per language (`en`, from en.txt and
en.txt.gz; feature `text`) and one per pair (`en-de`, from en-de.tsv; features `text` and
`translation`). For corpora too large for one machine, see "Preparing very large corpora"
in README.md (TFDS on Apache Beam).
"""
import dataclasses
import os
import re

import tensorflow_datasets as tfds

from xlm_jax.data import sources
from xlm_jax.data.shards import Part
from xlm_jax.errors import DataError, fail

_ENTRY = re.compile(r"(?:(?P<lang>[^=@\s]+)=)?(?P<name>[^=@\s]+)(?:@(?P<split>[^=@\s]+))?")
VERSION = "1.0.0"


@dataclasses.dataclass
class TfdsSource:
    lang: str
    name: str
    split: str


def parse_tfds_datasets(spec: str, default_split: str = "train") -> list[TfdsSource]:
    """`data.tfds_datasets` ("wiki40b/en,sw=c4/multilingual@sw") as TfdsSource entries."""
    parsed = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        match = _ENTRY.fullmatch(entry)
        if not match:
            raise DataError(f"data.tfds_datasets: cannot parse {entry!r}; use [<lang>=]<name>[@<split>], "
                            "e.g. wiki40b/en or sw=c4/multilingual@sw")
        name = match.group("name")
        config_name = name.split(":")[0].partition("/")[2]     # wiki40b/en:1.3.0 -> en
        lang = match.group("lang") or config_name
        if not lang or not sources._LANG_KEY.fullmatch(lang):
            raise DataError(f"data.tfds_datasets: {entry!r} names no language code; write it as <lang>={entry} "
                            "(e.g. en=wiki40b/en, sw=c4/multilingual@sw)")
        parsed.append(TfdsSource(lang=lang, name=name, split=match.group("split") or default_split))
    return parsed


def _first_line(error: Exception) -> str:
    return str(error).strip().split("\n")[0]


def describe(data_config) -> str:
    parts = []
    if getattr(data_config, "prepared_corpus", ""):
        parts.append(f"prepared corpus {data_config.prepared_corpus}")
    if getattr(data_config, "tfds_datasets", ""):
        where = getattr(data_config, "tfds_data_dir", "") or "the default TFDS data_dir"
        parts.append(f"TFDS {data_config.tfds_datasets} from {where}")
    return " + ".join(parts)


def check_tfds_sources(data_config):
    """Opens every TFDS source without reading it: names, splits and text feature fail here, up front."""
    text_key = getattr(data_config, "tfds_text_key", "text")
    data_dir = getattr(data_config, "tfds_data_dir", "") or None
    opened = {"prepared": None, "datasets": []}
    if getattr(data_config, "prepared_corpus", ""):
        opened["prepared"] = _open_prepared(data_config.prepared_corpus)
    for source in parse_tfds_datasets(getattr(data_config, "tfds_datasets", ""),
                                      getattr(data_config, "tfds_split", "train")):
        try:
            dataset = tfds.load(source.name, split=source.split, data_dir=data_dir, download=False)
        except Exception as e:   # tfds raises many types here (not found, not prepared, bad split)
            raise DataError(f"data.tfds_datasets: cannot open {source.name!r} split {source.split!r} in "
                            f"{data_dir or 'the default TFDS data_dir'} ({type(e).__name__}: {_first_line(e)}); "
                            "runs never download: prepare it first (`tfds build {source.name} --data_dir=...`) and set "
                            "--config.data.tfds_data_dir") from None
        if text_key not in dataset.element_spec:
            raise DataError(f"data.tfds_datasets: {source.name!r} has no feature {text_key!r} (it has "
                            f"{', '.join(sorted(dataset.element_spec))}); set --config.data.tfds_text_key")
        opened["datasets"].append((source, dataset))
    return opened


def shard_split(split: str, part: Part):
    """The sub-split of `split` a shard reads: `tfds.even_splits(split, S)[s]` (the whole split for S = 1)."""
    return split if part.count == 1 else tfds.even_splits(split, n=part.count)[part.index]


def _split_name(split: str, part: Part) -> str:
    return split if part.count == 1 else f"{split}, even split {part.index + 1} of {part.count}"


def read_dataset_part(source: TfdsSource, data_config, part: Part, reader: "sources.Reader",
                      limit: int | None = None) -> list[str]:
    """The lines of a shard's sub-split of a TFDS dataset (`check_tfds_sources` opened it whole)."""
    data_dir = getattr(data_config, "tfds_data_dir", "") or None
    dataset = tfds.load(source.name, split=shard_split(source.split, part), data_dir=data_dir, download=False)
    return _read_texts(dataset, getattr(data_config, "tfds_text_key", "text"),
                       f"TFDS {source.name}[{_split_name(source.split, part)}]", reader, limit)


def _read_texts(dataset, key: str, where: str, reader: "sources.Reader", limit: int | None) -> list[str]:
    """The non-empty lines of every example's `key` feature, checked like the lines of a file
    (the first `limit` of them with a limit)."""
    stats = sources.ReadStats(where)
    lines = []
    for index, example in enumerate(tfds.as_numpy(dataset)):
        value = example[key]
        if not isinstance(value, bytes):
            raise DataError(f"{where}: feature {key!r} holds {type(value).__name__}, not text; "
                            "set --config.data.tfds_text_key to a text feature")
        reader.bytes_read += len(value)
        lines.extend(reader.lines(value, stats, f"{where}, example {index}"))
        if limit is not None and len(lines) >= limit:
            del lines[limit:]
            break
    stats.kept = len(lines)
    reader.finish(stats)
    return lines


def read_prepared_part(builder, split: str, part: Part, reader: "sources.Reader",
                       limit: int | None = None) -> list:
    """A shard's sub-split of a prepared corpus split: texts of a `<lang>` split, (text, translation)
    pairs of a `<src>-<tgt>` split (checked when they were prepared)."""
    dataset = builder.as_dataset(split=shard_split(split, part), shuffle_files=False)
    if limit is not None:
        dataset = dataset.take(limit)
    rows = [(ex["text"].decode("utf-8"), ex["translation"].decode("utf-8")) for ex in tfds.as_numpy(dataset)]
    reader.bytes_read += sum(len(text) + len(translation) for text, translation in rows)
    stats = sources.ReadStats(f"{builder.data_dir} split {_split_name(split, part)}", lines=len(rows),
                              kept=len(rows))
    reader.finish(stats)
    return rows if is_pair_split(split) else [text for text, _ in rows]


def is_pair_split(split: str) -> bool:
    """`<src>-<tgt>` splits of a prepared corpus hold pairs, `<lang>` splits text."""
    return bool(sources._TSV_KEY.fullmatch(split)) and not sources._LANG_KEY.fullmatch(split)


# --- A local corpus prepared as TFDS records --------------------------------------------------

class LocalCorpusConfig(tfds.core.BuilderConfig):
    """Which corpus dir (or data.files spec) to prepare, and the bad-line policy to prepare it with."""

    def __init__(self, *, corpus_dir: str = "", files="", on_bad_line: str = "error",
                 max_line_chars: int = sources.DEFAULT_MAX_LINE_CHARS, **kwargs):
        super().__init__(version=VERSION, **kwargs)
        self.corpus_dir, self.files = corpus_dir, files
        self.on_bad_line, self.max_line_chars = on_bad_line, max_line_chars


class LocalCorpus(tfds.core.GeneratorBasedBuilder):
    """Raw text of a local corpus: split `<lang>` (feature text) per language, `<src>-<tgt>` per pair.

    Construct it with a LocalCorpusConfig (`prepare_local_corpus` does); the prepared dir is
    read back with `tfds.builder_from_directory`, no class registration needed.
    """
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Raw text, one split per language and per language pair."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            disable_shuffling=True,   # file order, line order: caps and held-out text as from the corpus dir
            description="A local xlm_jax corpus: <lang>.txt[.gz] and <src>-<tgt>.tsv[.gz] files.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                 "translation": tfds.features.Text()}))

    def _files(self):
        config = self.builder_config
        texts, tables = sources.corpus_dir_files(config.corpus_dir) if config.corpus_dir else ([], [])
        more_texts, more_tables = sources.resolve_files(config.files)
        return texts + more_texts, tables + more_tables

    def _split_generators(self, dl_manager):
        del dl_manager   # nothing to download: the corpus is local
        texts, tables = self._files()
        if not texts and not tables:
            raise DataError("LocalCorpusConfig names no files: set corpus_dir or files")
        by_split: dict[str, list] = {}
        for path, lang in texts:
            by_split.setdefault(lang, []).append((path, None))
        for path, src, tgt in tables:
            by_split.setdefault(f"{src}-{tgt}", []).append((path, (src, tgt)))
        return {split: self._generate_examples(files) for split, files in by_split.items()}

    def _generate_examples(self, files):
        """One file at a time, so preparing holds at most one file in memory."""
        config = self.builder_config
        reader = sources.Reader(config.on_bad_line, config.max_line_chars)
        for path, pair in files:
            name = os.path.basename(path)
            if pair is None:
                for index, text in enumerate(reader.read_txt(path)):
                    yield f"{name}:{index}", {"text": text, "translation": ""}
            else:
                for index, (text, translation) in enumerate(reader.read_tsv(path, *pair)):
                    yield f"{name}:{index}", {"text": text, "translation": translation}


def prepare_local_corpus(corpus_dir: str, data_dir: str, name: str = "default", files="",
                         on_bad_line: str = "error",
                         max_line_chars: int = sources.DEFAULT_MAX_LINE_CHARS) -> str:
    """Prepares a local corpus as TFDS records under data_dir; returns the dir for data.prepared_corpus."""
    config = LocalCorpusConfig(name=name, corpus_dir=corpus_dir, files=files, on_bad_line=on_bad_line,
                               max_line_chars=max_line_chars,
                               description=f"corpus_dir={corpus_dir!r} files={files!r}")
    builder = LocalCorpus(config=config, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder.data_dir


def _open_prepared(path: str):
    try:
        builder = tfds.builder_from_directory(path)
    except Exception as e:   # missing dir, no dataset_info.json, unreadable gs:// bucket, ...
        raise DataError(f"data.prepared_corpus: {path!r} is not a prepared corpus "
                        f"({type(e).__name__}: {_first_line(e)}); prepare one with "
                        "`python -m xlm_jax.data.tfds_builder --corpus_dir=DIR --data_dir=OUT` and pass the dir "
                        "it prints") from None
    if set(builder.info.features) != {"text", "translation"}:
        raise DataError(f"data.prepared_corpus: {path!r} holds features {sorted(builder.info.features)}, not a "
                        "corpus prepared by xlm_jax.data.tfds_builder; use data.tfds_datasets for other datasets")
    return builder


def main(argv=None) -> None:
    """`python -m xlm_jax.data.tfds_builder --corpus_dir=DIR --data_dir=OUT [--name=N] [--files=SPEC]`."""
    import argparse
    parser = argparse.ArgumentParser(description="Prepare a local corpus as TFDS records (raw text).")
    parser.add_argument("--corpus_dir", default="", help="a dir of <lang>.txt[.gz] and <src>-<tgt>.tsv[.gz]")
    parser.add_argument("--files", default="", help='data.files form: "en:/d/en/*.txt.gz;en-de:/d/en-de.tsv"')
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write to (local or gs://)")
    parser.add_argument("--name", default="default", help="builder config name (a corpus under data_dir)")
    parser.add_argument("--on_bad_line", default="error", choices=sources.BAD_LINE_POLICIES)
    parser.add_argument("--max_line_chars", type=int, default=sources.DEFAULT_MAX_LINE_CHARS)
    args = parser.parse_args(argv)
    try:
        path = prepare_local_corpus(args.corpus_dir, args.data_dir, args.name, args.files, args.on_bad_line,
                                    args.max_line_chars)
    except DataError as e:
        fail(str(e))
    print(f"prepared; train with --config.data.prepared_corpus={path}")


if __name__ == "__main__":
    main()
