"""data.shared_specials=False: each language its own <s> </s> <unk> <mask>, <pad> shared
(Dufter & Schuetze 2020's "shift special tokens"); and data.random_token_language."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import write_corpus, objective_streams
from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data.language_ranges import RANGES_FILE, LanguageRangeTokenizer, base_vocab_size
from xlm_jax.data.masking import mask_example
from xlm_jax.data.pipeline import train_batches
from xlm_jax.data.prepare import prepare_data
from xlm_jax.data.tokenizers import ByteTokenizer, load_tokenizer, save_tokenizer
from xlm_jax.errors import ConfigError

LANGUAGES = ("en", "qfe", "yo")
P = 256                                    # a byte base: 256 ordinary ids per language
END = 4 + 3 * P                            # the first id after the ranges: the first language's <mask>


def own():
    return LanguageRangeTokenizer(ByteTokenizer(), LANGUAGES, shared_specials=False)


def test_layout_each_language_its_own_specials_after_the_shared_ones():
    tok = own()
    assert tok.vocab_size == 1 + 3 * (P + 4) == END + 1 + 2 * 4
    views = {lang: tok.for_language(lang) for lang in LANGUAGES}
    specials = {lang: (v.bos_id, v.pad_id, v.eos_id, v.unk_id, v.mask_id) for lang, v in views.items()}
    assert specials == {"en": (0, 1, 2, 3, END), "qfe": (END + 1, 1, END + 2, END + 3, END + 4),
                        "yo": (END + 5, 1, END + 6, END + 7, END + 8)}
    assert set(tok.special_ids) == {0, 1, 2, 3, *range(END, tok.vocab_size)}
    ids = views["qfe"].encode(["Hi"])[0]
    np.testing.assert_array_equal(ids, [4 + P + ord("H"), 4 + P + ord("i")])
    assert [tok.language_of(i) for i in (0, 1, END, END + 1, END + 8, int(ids[0]))] == \
        ["en", None, "en", "qfe", "yo", "qfe"]
    assert [tok.id_to_piece(i) for i in (1, END + 1, END + 4)] == ["<pad>", "qfe:<s>", "qfe:<mask>"]
    row = np.concatenate([[views["qfe"].bos_id], ids, [views["qfe"].eos_id, views["qfe"].mask_id, 1]])
    assert tok.decode(row) == "Hi"                     # every language's specials are dropped
    np.testing.assert_array_equal(tok.base_ids(row), [0, 72 + 4, 105 + 4, 2, 260, 1])
    np.testing.assert_array_equal(views["yo"].from_base([0, 4, 260]), [END + 5, 4 + 2 * P, END + 8])
    masks = tok.own_mask_ids()
    assert (masks[4:4 + P] == END).all() and (masks[4 + P:4 + 2 * P] == END + 4).all() and masks[END + 5] == END + 8


def test_shared_specials_keep_the_old_layout():
    tok = LanguageRangeTokenizer(ByteTokenizer(), LANGUAGES)
    assert (tok.vocab_size, tok.mask_id, tok.special_ids) == (END + 1, END, (0, 1, 2, 3, END))
    assert {tok.for_language(lang).bos_id for lang in LANGUAGES} == {0}
    assert (tok.own_mask_ids() == END).all() and tok.language_of(END) is None


def test_saved_and_loaded(tmp_path):
    save_tokenizer(own(), tmp_path)
    assert json.loads((tmp_path / RANGES_FILE).read_text())["shared_specials"] is False
    loaded = load_tokenizer(tmp_path)
    assert not loaded.shared_specials and loaded.vocab_size == own().vocab_size
    state = json.loads((tmp_path / RANGES_FILE).read_text())
    del state["shared_specials"]                       # a file from before the option: shared specials
    (tmp_path / RANGES_FILE).write_text(json.dumps(state))
    assert load_tokenizer(tmp_path).shared_specials


def _mask(tokens, tok, seed, **options):
    return mask_example(tf.constant(tokens, tf.int32), tf.constant([seed, 1], tf.int64), vocab_size=tok.vocab_size,
                        mask_id=tok.mask_id, special_ids=tok.special_ids, mask_prob=0.5, num_predictions=16,
                        **options)


def test_masking_uses_each_languages_own_mask_and_random_tokens_of_any_language():
    tok = own()
    en, qfe = (tok.for_language(lang) for lang in ("en", "qfe"))
    tokens = np.concatenate([[qfe.bos_id], qfe.encode(["a fake sentence"])[0], [qfe.eos_id],
                             en.encode(["an English one"])[0], [en.eos_id]])
    masked = []
    for seed in range(10):
        out = _mask(tokens, tok, seed, mask_token_prob=1.0, random_token_prob=0.0, mask_ids=tok.own_mask_ids())
        new = out["input_ids"].numpy()
        chosen = new != tokens
        assert chosen.any() and not np.isin(tokens[chosen], tok.special_ids).any()
        expected = np.where((tokens[chosen] - 4) // P == 1, qfe.mask_id, en.mask_id)
        np.testing.assert_array_equal(new[chosen], expected)
        masked.append(new[chosen])
    assert set(np.concatenate(masked)) == {qfe.mask_id, en.mask_id}
    for language_range_size in (P, 0):   # "same" / "any"
        old, new = [], []
        for seed in range(30):
            out = _mask(tokens, tok, seed, mask_token_prob=0.0, random_token_prob=1.0,
                        language_range_size=language_range_size, random_ids=tok.ordinary_ids)
            positions = out["masked_positions"].numpy()[out["masked_weights"].numpy() > 0]
            old.append(tokens[positions])
            new.append(out["input_ids"].numpy()[positions])
        old, new = np.concatenate(old), np.concatenate(new)
        assert ((new >= 4) & (new < END)).all()             # ordinary ids only, never a special
        if language_range_size:
            np.testing.assert_array_equal((new - 4) // P, (old - 4) // P)
        else:
            assert set(((new - 4) // P).tolist()) == {0, 1, 2}


def test_vocab_size_rule_and_config_errors_name_the_field():
    assert base_vocab_size(1 + 2 * (1000 + 4), "unigram", ["en", "qfe"], shared_specials=False) == 1005
    assert base_vocab_size(5 + 2 * 1000, "unigram", ["en", "qfe"]) == 1005
    with pytest.raises(ConfigError, match=r"`model.vocab_size`: got 2006.*1 \+ 2 x \(P \+ 4\).*"
                                          r"vocab_size=2005 \(998 ids per language\) or 2007"):
        base_vocab_size(2006, "unigram", ["en", "qfe"], shared_specials=False)
    config = default_config()
    config.data.shared_specials = False
    with pytest.raises(ConfigError, match=r"`data.shared_specials`: got False, but only languages with ids of "
                                          r"their own.*language_id_ranges=True"):
        validate(config)
    config.data.language_id_ranges, config.data.languages, config.model.vocab_size = True, "en,qfe", 2009
    validate(config)
    config.data.random_token_language = "other"
    with pytest.raises(ConfigError, match=r"`data.random_token_language`: got 'other'; allowed values: same, any"):
        validate(config)
    config.data.random_token_language, config.objectives.tlm = "any", 1.0
    with pytest.raises(ConfigError, match=r"`data.shared_specials`: got False, but an objective reads translation "
                                          r"pairs"):
        validate(config)
    config.objectives.tlm, config.data.tokenizer, config.data.languages = 0.0, "bytes", ""
    config.model.vocab_size = 517
    with pytest.raises(ConfigError, match=r"`model.vocab_size`: got 517.*1 \+ L x \(256 \+ 4\).*521 for 2"):
        validate(config)


def test_prepared_blocks_carry_each_languages_own_specials(shared_data, tmp_path):
    """English under two names, bytes, own specials: the qfe blocks are the en blocks with every
    id moved to qfe's range and qfe's <s> </s>; masking picks qfe's <mask> for them."""
    (tmp_path / "corpus").mkdir()
    corpus = write_corpus(tmp_path / "corpus", shared_data, ["en"], 200)
    config = default_config()
    d = config.data
    d.files = f"en:{corpus}/en.txt;qfe:{corpus}/en.txt"
    d.language_id_ranges, d.shared_specials, d.tokenizer = True, False, "bytes"
    d.seq_len, d.packing, d.eval_sentences_per_language = 32, "lines", 10
    config.model.vocab_size, config.model.max_len = 1 + 2 * (P + 4), 64
    config.train.batch_size, config.train.num_steps, config.train.warmup_steps = 16, 2, 0
    data = prepare_data(validate(config), str(tmp_path / "run"), log=lambda *_: None)
    tok = data.tokenizer
    en, qfe = (data.train_blocks[data.languages.index(lang)][0] for lang in ("en", "qfe"))
    moved = np.where(en >= 4, en + P, en)
    moved[en == 0], moved[en == 2] = tok.for_language("qfe").bos_id, tok.for_language("qfe").eos_id
    np.testing.assert_array_equal(qfe, moved)
    batch = next(train_batches(data, config, start_step=0, streams=objective_streams(config)))["mlm"]
    languages = np.repeat(batch["language"][:, None], d.seq_len, axis=1)
    own_masks = np.where(languages == data.languages.index("qfe"), tok.for_language("qfe").mask_id, tok.mask_id)
    is_mask = np.isin(batch["input_ids"], (tok.mask_id, tok.for_language("qfe").mask_id))
    assert is_mask.sum() > 10
    np.testing.assert_array_equal(batch["input_ids"][is_mask], own_masks[is_mask])
