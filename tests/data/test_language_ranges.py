"""data.language_id_ranges: each language its own ids around a shared base (Wu, Conneau et al. 2020)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data.language_ranges import RANGES_FILE, LanguageRangeTokenizer, base_vocab_size
from xlm_jax.data.masking import mask_example, word_start_table
from xlm_jax.data.sampling import temperature_probs
from xlm_jax.data.tokenizers import (BYTES_FILE, SENTENCEPIECE_FILE, ByteTokenizer, load_tokenizer, save_tokenizer,
                                     train_sentencepiece, write_hf_tokenizer_files)
from xlm_jax.errors import ConfigError, DataError

LANGUAGES = ("el", "en", "ja", "yo")   # four scripts: Greek, Latin, kana/kanji, Latin with tone marks


@pytest.fixture(scope="module")
def text(shared_data):
    return {lang: (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:300]
            for lang in LANGUAGES}


@pytest.fixture(scope="module")
def sentencepiece(text):
    return train_sentencepiece(text, temperature_probs({lang: 300 for lang in text}, 0.3), 900,
                               input_sentence_size=1200, character_coverage=0.98, byte_fallback=True, seed=0)


@pytest.fixture(scope="module", params=["sentencepiece", "bytes"])
def base(request, sentencepiece):
    return sentencepiece if request.param == "sentencepiece" else ByteTokenizer()


def _reference_ids(base, base_ids: np.ndarray, index: int) -> np.ndarray:
    """The documented layout by hand: specials 0-3 as they are, <mask> last, b -> 4 + index * P + (b - 4)."""
    p = base.vocab_size - 5
    mask = 5 + len(LANGUAGES) * p - 1
    return np.array([b if b < 4 else mask if b == base.vocab_size - 1 else 4 + index * p + (b - 4)
                     for b in base_ids.tolist()], np.int64)


def test_layout_and_disjoint_ranges(base, text):
    tok = LanguageRangeTokenizer(base, LANGUAGES)
    p = base.vocab_size - 5
    assert (tok.range_size, tok.vocab_size, tok.mask_id) == (p, 5 + 4 * p, 4 + 4 * p)
    assert tok.special_ids == (0, 1, 2, 3, 4 + 4 * p) and tok.languages == LANGUAGES
    every = [line for lines in text.values() for line in lines[:20]]
    seen = {}
    for index, lang in enumerate(LANGUAGES):
        ids = tok.for_language(lang).encode(every)
        for got, base_ids in zip(ids, base.encode(every)):
            np.testing.assert_array_equal(got, _reference_ids(base, base_ids, index))
        ordinary = set(np.concatenate(ids).tolist()) - set(tok.special_ids)
        assert ordinary and all(4 + index * p <= i < 4 + (index + 1) * p for i in ordinary)
        seen[lang] = ordinary
    for a in LANGUAGES:
        for b in LANGUAGES:
            assert a == b or not seen[a] & seen[b]
    # every ordinary id belongs to exactly one (language, base id): the ranges tile the vocabulary
    ordinary = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    owners = {(tok.language_of(i), int(tok.base_ids(i))) for i in ordinary}
    assert len(owners) == len(ordinary) == 4 * p
    assert {b for _, b in owners} == set(range(4, base.vocab_size - 1))


def test_round_trip_every_language_and_script(base, text):
    tok = LanguageRangeTokenizer(base, LANGUAGES)
    for lang in LANGUAGES:
        lines = text[lang][:30]
        expected = lines if isinstance(base, ByteTokenizer) else [base.decode(ids) for ids in base.encode(lines)]
        for view in map(tok.for_language, LANGUAGES):   # any range holds any text; each gives it back
            assert [tok.decode(ids) for ids in view.encode(lines)] == expected, (lang, view.language)
            assert [view.decode(ids) for ids in view.encode(lines[:3])] == expected[:3]


def test_tlm_pair_mixing_two_languages_decodes(base, text):
    tok = LanguageRangeTokenizer(base, LANGUAGES)
    en, ja = text["en"][0], text["ja"][0]
    en_ids, ja_ids = tok.for_language("en").encode([en])[0], tok.for_language("ja").encode([ja])[0]
    pair = np.concatenate([[0], en_ids, [2, 2], ja_ids, [2]])
    base_pair = np.concatenate([[0], base.encode([en])[0], [2, 2], base.encode([ja])[0], [2]])
    assert tok.decode(pair) == base.decode(base_pair)
    if isinstance(base, ByteTokenizer):
        assert tok.decode(pair) == en + ja
    assert tok.id_to_piece(int(en_ids[0])) == "en:" + base.id_to_piece(int(base.encode([en])[0][0]))
    assert tok.id_to_piece(int(ja_ids[-1])).startswith("ja:")
    assert [tok.id_to_piece(i) for i in (0, 2, tok.mask_id)] == ["<s>", "</s>", "<mask>"]
    with pytest.raises(DataError, match=f"token id {tok.vocab_size} is outside"):
        tok.decode([tok.vocab_size])


def test_save_and_load_give_the_same_tokenizer(base, text, tmp_path):
    tok = LanguageRangeTokenizer(base, LANGUAGES)
    save_tokenizer(tok, tmp_path)
    base_file = BYTES_FILE if isinstance(base, ByteTokenizer) else SENTENCEPIECE_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base_file, RANGES_FILE])
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, LanguageRangeTokenizer) and loaded.languages == LANGUAGES
    assert loaded.vocab_size == tok.vocab_size
    for lang in LANGUAGES:
        lines = text[lang][:20]
        for a, b in zip(loaded.for_language(lang).encode(lines), tok.for_language(lang).encode(lines)):
            np.testing.assert_array_equal(a, b)
    state = json.loads((tmp_path / RANGES_FILE).read_text(encoding="utf-8"))
    (tmp_path / RANGES_FILE).write_text(json.dumps({**state, "base": "wordpiece"}), encoding="utf-8")
    with pytest.raises(DataError, match=f"{RANGES_FILE}.*names a 'wordpiece' base"):
        load_tokenizer(tmp_path)
    (tmp_path / RANGES_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match=f"{RANGES_FILE} is not an xlm_jax language-range file"):
        load_tokenizer(tmp_path)


def test_masking_keeps_random_tokens_and_word_starts_in_their_language(sentencepiece, text):
    tok = LanguageRangeTokenizer(sentencepiece, LANGUAGES)
    p = tok.range_size
    en, el = tok.for_language("en").encode(text["en"][:2]), tok.for_language("el").encode(text["el"][:2])
    tokens = np.concatenate([[0], en[0][:30], [2], el[0][:30], [2]]).astype(np.int32)
    replaced = []
    for seed in range(20):   # every chosen token becomes a random one (no <mask>, none kept)
        out = mask_example(tokens, tf.constant([seed, 1], tf.int64), vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                           special_ids=tok.special_ids, mask_prob=0.5, mask_token_prob=0.0, random_token_prob=1.0,
                           num_predictions=40, language_range_size=p)
        positions = out["masked_positions"].numpy()[out["masked_weights"].numpy() > 0]
        new, old = out["input_ids"].numpy()[positions], tokens[positions]
        np.testing.assert_array_equal((new - 4) // p, (old - 4) // p)   # same language's range
        replaced.append(new)
    replaced = np.concatenate(replaced)
    assert len(np.unique(replaced)) > 0.5 * len(replaced)   # spread over the range, not a copy of the input
    table, base_table = word_start_table(tok), word_start_table(sentencepiece)
    ids = np.arange(tok.vocab_size)
    np.testing.assert_array_equal(table, base_table[tok.base_ids(ids)] & ~np.isin(ids, tok.special_ids))
    assert table[[i for i in ids if tok.id_to_piece(i).startswith("en:\u2581")]].all()


def test_fertility_report_reads_each_language_in_its_range(sentencepiece, text):
    from xlm_jax.data.tokenizer_report import tokenizer_report
    sample = {lang: ("training", lines[:50]) for lang, lines in text.items()}
    ranged = tokenizer_report(LanguageRangeTokenizer(sentencepiece, LANGUAGES), sample)
    assert ranged == tokenizer_report(sentencepiece, sample)   # the same pieces, only shifted
    assert ranged["ja"]["byte_fallback_rate"] > 0               # 98% coverage leaves rare kanji to bytes


def test_tokenizer_errors_a_user_can_act_on(sentencepiece, tmp_path):
    tok = LanguageRangeTokenizer(sentencepiece, LANGUAGES)
    with pytest.raises(DataError, match=r"needs its language: use tokenizer\.for_language\(name\).*el, en, ja, yo"):
        tok.encode(["hello"])
    with pytest.raises(DataError, match=r"language 'fr' has no id range.*el, en, ja, yo"):
        tok.for_language("fr")
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*got 8002.*2 languages.*vocab_size=8001 .*or 8003"):
        base_vocab_size(8002, "unigram", ["en", "sw"])
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*got 517.*3 languages.*vocab_size=773"):
        base_vocab_size(517, "bytes", ["el", "en", "sw"])
    assert base_vocab_size(8001, "bpe", ["en", "sw"]) == 4003 and base_vocab_size(773, "bytes", "abc") == 261
    with pytest.raises(ConfigError, match=r"data\.language_id_ranges.*transformers has no such tokenizer"):
        write_hf_tokenizer_files(tok, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_config_validation():
    config = default_config()
    config.data.language_id_ranges = True
    validate(config)                                  # languages unknown until the corpus is read
    config.data.languages = "sw,en"
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*got 8002.*vocab_size=8001"):
        validate(config)
    config.model.vocab_size = 8001
    validate(config)
    config.data.tokenizer, config.model.vocab_size = "bytes", 520
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*5 \+ L x 256"):
        validate(config)
    config.model.vocab_size = 517
    validate(config)
    config.data.tokenizer = "unigram"
    config.init_from = "hf:/models/xlm-roberta-base"
    with pytest.raises(ConfigError, match=r"data\.language_id_ranges.*init_from='hf:/models/xlm-roberta-base'"):
        validate(config)
    config.init_from, config.data.extend_vocab_pieces = "", 1000
    with pytest.raises(ConfigError, match=r"data\.language_id_ranges.*extend_vocab_pieces=1000"):
        validate(config)


# --- a run from scratch: prepare_data trains the base, packs each language into its range ---------

@pytest.fixture(scope="module")
def corpus_dir(shared_data, tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    for lang in ("en", "sw"):
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:300]
        (directory / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = (shared_data / "parallel" / "tico19" / "en-sw.tsv").read_text(encoding="utf-8").split("\n")[:200]
    (directory / "en-sw.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return directory


def _config(corpus_dir, vocab_size=5 + 2 * 500, **data_fields):
    config = default_config()
    config.data.corpus_dir, config.data.language_id_ranges = str(corpus_dir), True
    config.data.seq_len, config.data.tokenizer_sentences = 32, 2000
    config.model.vocab_size = vocab_size
    config.data.update(data_fields)
    return validate(config)


def test_prepared_blocks_and_pairs_hold_only_their_languages_ids(corpus_dir, tmp_path):
    from xlm_jax.data.prepare import prepare_data
    logs = []
    data = prepare_data(_config(corpus_dir), str(tmp_path / "run"), log=logs.append, pairs=True)
    tok = data.tokenizer
    assert isinstance(tok, LanguageRangeTokenizer) and tok.languages == ("en", "sw") and data.languages == ["en", "sw"]
    assert (tok.range_size, tok.vocab_size) == (500, 1005) and tok.base.vocab_size == 505
    assert (tmp_path / "run" / RANGES_FILE).exists() and (tmp_path / "run" / SENTENCEPIECE_FILE).exists()
    specials = np.array(tok.special_ids)

    def in_range(ids, index):
        ids = np.asarray(ids)
        ordinary = ids[~np.isin(ids, specials)]
        return ordinary.size > 0 and ((4 + index * 500 <= ordinary) & (ordinary < 4 + (index + 1) * 500)).all()

    for index, lang in enumerate(data.languages):
        blocks = data.train_blocks[index] + data.eval_blocks[index]
        assert all(in_range(b, index) for b in blocks if b.size), lang
        first = (corpus_dir / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[0]
        assert tok.decode(data.train_blocks[index][0][0]).startswith(first[:15])
    assert data.pairs == [("en", "sw")]
    table = data.train_pairs[0][0]
    src, tgt = table.pair(0)
    assert in_range(src, 0) and in_range(tgt, 1)
    en_line, sw_line = (corpus_dir / "en-sw.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t")
    assert tok.decode(src) == tok.base.decode(tok.base.encode([en_line])[0][:30])
    assert tok.decode(np.concatenate([src, [2], tgt])).endswith(tok.base.decode(tok.base.encode([sw_line])[0][:30]))
    assert any("each of en, sw has its own 500 ids" in line for line in logs)
    from xlm_jax.data.pipeline import _masker   # the pipeline's masking keeps a random token in its range
    masker = _masker(data, _config(corpus_dir, mask_prob=0.5, mask_token_prob=0.0, random_token_prob=1.0))
    for index in range(2):
        block = data.train_blocks[index][0][0]
        assert in_range(masker(block, tf.constant([index, 7], tf.int64))["input_ids"].numpy(), index)

    logs.clear()
    again = prepare_data(_config(corpus_dir), str(tmp_path / "run"), log=logs.append)   # a resume loads it
    assert any(line.startswith("tokenizer: loaded") for line in logs) and again.tokenizer.languages == ("en", "sw")
    for a, b in zip(again.train_blocks, data.train_blocks):
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ConfigError, match=r"data\.language_id_ranges.*got False.*its own ids"):
        prepare_data(_config(corpus_dir, language_id_ranges=False), str(tmp_path / "run"), log=logs.append)


def test_run_from_scratch_errors(corpus_dir, tmp_path):
    from xlm_jax.data.prepare import prepare_data
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*got 8002.*2 languages \(en, sw\).*vocab_size=8001"):
        prepare_data(_config(corpus_dir, vocab_size=8002), str(tmp_path / "a"), log=lambda _: None)
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*got 261.*vocab_size=517"):
        prepare_data(_config(corpus_dir, vocab_size=261, tokenizer="bytes"), str(tmp_path / "b"), log=lambda _: None)
    with pytest.raises(DataError, match=r"language_id_ranges: the base SentencePiece.*= 55 of model\.vocab_size=105"):
        prepare_data(_config(corpus_dir, vocab_size=105), str(tmp_path / "c"), log=lambda _: None)
    assert not list((tmp_path / "c").glob("tokenizer*"))
