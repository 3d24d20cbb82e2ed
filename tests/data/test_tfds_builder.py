"""TFDS sources without the network: datasets by name under tfds.testing.mock_data, and our LocalCorpus builder."""
import types

import pytest
import tensorflow_datasets as tfds

from xlm_jax.data.corpus import load_corpus, read_corpus_dir
from xlm_jax.data.tfds_builder import parse_tfds_datasets, prepare_local_corpus
from xlm_jax.errors import DataError


def _data_config(**overrides):
    fields = dict(corpus_dir="", files="", prepared_corpus="", tfds_datasets="", tfds_data_dir="",
                  tfds_split="train", tfds_text_key="text", max_sentences_per_language=0, min_languages=1,
                  on_bad_line="error", max_line_chars=100_000)
    return types.SimpleNamespace(**{**fields, **overrides})


def _head(path, n):
    return path.read_text(encoding="utf-8").split("\n")[:n]


def test_parse_tfds_datasets():
    assert [(s.lang, s.name, s.split) for s in parse_tfds_datasets("wiki40b/en, wiki40b/de:1.3.0@test,"
                                                                   "sw=c4/multilingual@sw")] == [
        ("en", "wiki40b/en", "train"), ("de", "wiki40b/de:1.3.0", "test"), ("sw", "c4/multilingual", "sw")]
    with pytest.raises(DataError, match="names no language code.*<lang>=c4/multilingual"):
        parse_tfds_datasets("c4/multilingual")


def test_tfds_datasets_by_name_with_mock_data():
    with tfds.testing.mock_data(num_examples=4):
        corpus = load_corpus(_data_config(tfds_datasets="wiki40b/en,wiki40b/de",
                                          tfds_data_dir="gs://never-read/tensorflow_datasets", min_languages=2))
    assert sorted(corpus.mono) == ["de", "en"]
    assert all(len(s) >= 1 and all(line.strip() for line in s) for s in corpus.mono.values())
    assert "TFDS wiki40b/en,wiki40b/de from gs://never-read/tensorflow_datasets" in corpus.origin


def test_tfds_missing_text_feature_fails_up_front():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(DataError, match=r"'wiki40b/en' has no feature 'body' \(it has .*text.*tfds_text_key"):
            load_corpus(_data_config(tfds_datasets="wiki40b/en", tfds_text_key="body"))


def test_tfds_unknown_dataset_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"cannot open 'no_such_dataset_xyz/en'.*runs never download"):
        load_corpus(_data_config(tfds_datasets="no_such_dataset_xyz/en", tfds_data_dir=str(tmp_path)))


@pytest.fixture
def small_corpus(tmp_path, shared_data):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for lang in ("el", "ja"):
        (corpus_dir / f"{lang}.txt").write_text("\n".join(_head(shared_data / "mono" / f"{lang}.txt", 60)) + "\n",
                                                encoding="utf-8")
    tsv = _head(shared_data / "parallel" / "tatoeba_challenge" / "en-de.tsv", 40)
    (corpus_dir / "en-de.tsv").write_text("\n".join(tsv) + "\n", encoding="utf-8")
    return corpus_dir


def test_prepared_local_corpus_reads_back_the_same_corpus(tmp_path, small_corpus):
    path = prepare_local_corpus(str(small_corpus), str(tmp_path / "tfds"), name="small")
    assert path == str(tmp_path / "tfds" / "local_corpus" / "small" / "1.0.0")
    assert sorted(tfds.builder_from_directory(path).info.splits) == ["el", "en-de", "ja"]
    prepared = load_corpus(_data_config(prepared_corpus=path))
    direct = read_corpus_dir(str(small_corpus))
    assert prepared.mono == direct.mono and prepared.parallel == direct.parallel
    assert f"prepared corpus {path}" in prepared.origin


def test_preparing_checks_lines_like_a_run(tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "en.txt").write_bytes(b"fine\nnot \xff fine\n")
    with pytest.raises(DataError, match=r"en\.txt, line 2: byte offset 9 \(0xff\) is not valid UTF-8"):
        prepare_local_corpus(str(corpus_dir), str(tmp_path / "tfds"), name="bad")
    path = prepare_local_corpus(str(corpus_dir), str(tmp_path / "tfds"), name="skipped", on_bad_line="skip")
    assert load_corpus(_data_config(prepared_corpus=path)).mono == {"en": ["fine"]}


def test_prepared_corpus_that_is_not_one(tmp_path):
    with pytest.raises(DataError, match=r"data.prepared_corpus: .* is not a prepared corpus"):
        load_corpus(_data_config(prepared_corpus=str(tmp_path / "nothing")))
