"""`data.languages`: train on some of the sources' languages; a pair file is read only when both
of its languages are kept, and a language the sources lack is an error naming the field."""
import types

import pytest

from tests.helpers import write_corpus
from xlm_jax.data.corpus import load_corpus
from xlm_jax.errors import DataError


def _config(**fields):
    defaults = dict(corpus_dir="", files="", prepared_corpus="", tfds_datasets="", max_sentences_per_language=0,
                    min_languages=2, languages="", on_bad_line="error", max_line_chars=100_000)
    return types.SimpleNamespace(**{**defaults, **fields})


@pytest.fixture(scope="module")
def corpus_dir(shared_data, tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("filtered"), shared_data, ("en", "sw", "el"), 50,
                        pairs={"en-sw": "tico19", "en-ar": "tico19"}, pair_rows=20)


def test_only_the_chosen_languages_and_their_pairs_are_read(corpus_dir):
    everything = load_corpus(_config(corpus_dir=str(corpus_dir)))
    assert sorted(everything.mono) == ["ar", "el", "en", "sw"] and len(everything.parallel) == 2
    chosen = load_corpus(_config(corpus_dir=str(corpus_dir), languages="en, sw"))
    assert sorted(chosen.mono) == ["en", "sw"]
    assert list(chosen.parallel) == [("en", "sw")]                     # en-ar has a side left out
    assert chosen.mono["en"] == everything.mono["en"][:len(chosen.mono["en"])]   # en.txt, then en-sw's sides
    assert len(chosen.mono["en"]) == 50 + 20
    assert "data.languages" in chosen.origin


def test_the_built_in_corpus_keeps_the_chosen_languages_and_their_english_pairs():
    corpus = load_corpus(_config(languages="en,de,fr"))
    assert sorted(corpus.mono) == ["de", "en", "fr"]
    assert sorted(corpus.parallel) == [("en", "de"), ("en", "fr")]


def test_a_language_the_sources_lack_names_the_field_and_what_is_there(corpus_dir):
    with pytest.raises(DataError, match=r"config field `data.languages`: xx not in .*its languages: ar, el, en, sw"):
        load_corpus(_config(corpus_dir=str(corpus_dir), languages="en,xx"))
