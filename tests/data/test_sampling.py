"""Temperature sampling against hand-computed probabilities; caps and floors; the realized mixture."""
import json
import types

import numpy as np
import pytest

from tests.helpers import objective_streams
from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data.pipeline import train_batches
from xlm_jax.data.prepare import PretrainData
from xlm_jax.data.sampling import language_probs, parse_language_probs, sampling_table, temperature_probs
from xlm_jax.errors import ConfigError, DataError


def test_alpha_one_is_proportional():
    assert temperature_probs({"en": 30, "sw": 10}, 1.0) == pytest.approx({"en": 0.75, "sw": 0.25})


def test_alpha_zero_is_uniform():
    probs = temperature_probs({"en": 10**9, "sw": 3, "yo": 1}, 0.0)
    assert probs == pytest.approx({"en": 1 / 3, "sw": 1 / 3, "yo": 1 / 3})


def test_alpha_point_three():
    # 1000^0.3 = 7.9433, 10^0.3 = 1.9953 -> 7.9433 / 9.9386
    probs = temperature_probs({"en": 1000, "sw": 10}, 0.3)
    assert probs == pytest.approx({"en": 0.79924, "sw": 0.20076}, abs=1e-5)


def test_web_scale_counts_do_not_overflow():
    probs = temperature_probs({"en": 10**15, "sw": 10**6}, 1.0)
    assert probs["en"] == pytest.approx(1.0) and probs["sw"] == pytest.approx(1e-9)


def test_language_without_sentences_is_an_error():
    with pytest.raises(DataError, match="language.* sw have no sentences"):
        temperature_probs({"en": 5, "sw": 0}, 0.3)


def test_table_lists_languages_by_size():
    counts = {"sw": 10, "en": 1000}
    table = sampling_table(counts, temperature_probs(counts, 0.3))
    lines = table.splitlines()
    assert lines[0].split() == ["language", "sentences", "p_i", "q_i"]
    assert lines[1].split() == ["en", "1,000", "0.9901", "0.7992"]
    assert lines[2].split() == ["sw", "10", "0.0099", "0.2008"]


def test_table_shows_expected_epochs():
    # 1000 steps * 32 = 32,000 blocks drawn: en .8 * 32,000 / 40,000 blocks = 0.64, sw .2 * 32,000 / 50 = 128
    table = sampling_table({"en": 10**6, "sw": 2000}, {"en": 0.8, "sw": 0.2}, unit="tokens",
                           blocks={"en": 40_000, "sw": 50}, examples=32_000)
    lines = table.splitlines()
    assert lines[0].split() == ["language", "tokens", "p_i", "q_i", "blocks", "epochs"]
    assert lines[1].split() == ["en", "1,000,000", "0.9980", "0.8000", "40,000", "0.64"]
    assert lines[2].split() == ["sw", "2,000", "0.0020", "0.2000", "50", "128"]
    assert lines[3].split() == ["total", "1,002,000", "1.0000", "1.0000", "40,050"]
    assert "32,000 blocks drawn" in lines[4]


# --- caps and floors (data.language_caps / data.language_floors) --------------------------------


def test_a_cap_moves_its_excess_to_the_others_in_proportion():
    # alpha=1: en .6, el .3, sw .1; en capped at .4 -> el and sw share .6 as 3:1
    probs = language_probs({"en": 60, "el": 30, "sw": 10}, 1.0, caps="en:0.4")
    assert probs == pytest.approx({"en": 0.4, "el": 0.45, "sw": 0.15})


def test_a_floor_takes_its_share_from_the_others_in_proportion():
    # alpha=1: en .6, el .3, sw .1; sw floored at .25 -> en and el share .75 as 2:1
    probs = language_probs({"en": 60, "el": 30, "sw": 10}, 1.0, floors="sw:0.25")
    assert probs == pytest.approx({"en": 0.5, "el": 0.25, "sw": 0.25})


def test_a_cap_can_push_another_language_over_its_own_cap():
    # alpha=0: 1/4 each. en capped at .1 -> the others get .3 each, so el (cap .2) is capped too,
    # and sw and yo share the remaining .7 equally.
    probs = language_probs({"en": 9, "el": 5, "sw": 3, "yo": 1}, 0.0, caps="en:0.1,el:0.2")
    assert probs == pytest.approx({"en": 0.1, "el": 0.2, "sw": 0.35, "yo": 0.35})


def test_caps_and_floors_together():
    # alpha=1: en .8, el .15, sw .05; en capped at .5, sw floored at .2 -> el keeps the rest, .3
    probs = language_probs({"en": 80, "el": 15, "sw": 5}, 1.0, caps="en:0.5", floors="sw:0.2")
    assert probs == pytest.approx({"en": 0.5, "el": 0.3, "sw": 0.2})


def test_bounds_that_already_hold_change_nothing():
    counts = {"en": 1000, "sw": 10}
    assert language_probs(counts, 0.3, caps="en:0.9", floors="sw:0.1") == pytest.approx(
        temperature_probs(counts, 0.3))


@pytest.mark.parametrize("text, match", [
    ("en=0.2", "bad entry 'en=0.2'"), ("en:1.5", "bad entry 'en:1.5'"), (":0.2", "bad entry ':0.2'"),
    ("en:x", "bad entry 'en:x'"), ("en:0.1,en:0.2", "'en' is listed twice"),
])
def test_malformed_bounds_name_the_field_and_the_entry(text, match):
    with pytest.raises(ConfigError, match=f"data.language_caps.*{match}"):
        parse_language_probs(text, "data.language_caps")


def test_bounds_of_unknown_languages_name_the_corpus_languages():
    with pytest.raises(ConfigError, match=r"data.language_floors.*no training text for xx; languages of the "
                                          r"corpus: en, sw"):
        language_probs({"en": 10, "sw": 5}, 0.3, floors="xx:0.1")


def test_impossible_bounds_are_config_errors():
    with pytest.raises(ConfigError, match=r"data.language_caps.*caps sum to 0.5 < 1"):
        language_probs({"en": 10, "sw": 5}, 0.3, caps="en:0.3,sw:0.2")
    with pytest.raises(ConfigError, match=r"data.language_floors.*floors sum to 1.2 > 1"):
        language_probs({"en": 10, "sw": 5}, 0.3, floors="en:0.6,sw:0.6")
    with pytest.raises(ConfigError, match=r"data.language_floors.*sw floor 0.3 is above its cap 0.2"):
        language_probs({"en": 10, "sw": 5}, 0.3, caps="sw:0.2", floors="sw:0.3")


def test_validate_checks_sampling_fields():
    config = default_config()
    config.data.sampling_unit = "words"
    with pytest.raises(ConfigError, match=r"data.sampling_unit.*'words'.*sentences, tokens"):
        validate(config)
    config = default_config()
    config.data.language_caps = "en:0.2,sw"
    with pytest.raises(ConfigError, match=r"data.language_caps.*bad entry 'sw'"):
        validate(config)
    config = default_config()
    config.data.language_floors = "en:0.6,sw:0.6"
    with pytest.raises(ConfigError, match=r"data.language_floors.*sum to 1.2"):
        validate(config)
    config = default_config()
    config.data.sampling_unit, config.data.language_caps, config.data.language_floors = "tokens", "en:.2", "sw:0.01"
    validate(config)


# --- realized language mixture of train_batches ------------------------------------------------------


def test_realized_language_fractions_match_q():
    """200 batches of 32 from 5 languages of 1 to 5,000 blocks: every realized fraction within 4 binomial
    standard errors of its q_i (the batches are a pure function of the seed, so this cannot flake)."""
    sizes = {"en": 5000, "el": 800, "hy": 60, "sw": 7, "yo": 1}
    languages = sorted(sizes)
    probs = language_probs(sizes, 0.3, caps="en:0.35", floors="yo:0.08")
    assert probs["en"] == pytest.approx(0.35) and probs["yo"] == pytest.approx(0.08)
    data = PretrainData(languages=languages, probs=[probs[lang] for lang in languages], counts=sizes,
                        tokenizer=types.SimpleNamespace(vocab_size=100, mask_id=4, special_ids=(0, 1, 2, 3, 4),
                                                        languages=()),
                        num_shards=1, shards=range(1), evaluated=[],
                        train_blocks=[[np.full((sizes[lang], 16), 10 + i, np.int32)]
                                      for i, lang in enumerate(languages)],
                        eval_blocks=[[np.zeros((0, 16), np.int32)]] * len(languages))
    config = default_config()
    config.data.seq_len, config.train.batch_size, config.train.seed, config.data.shards = 16, 32, 7, 1
    batches = train_batches(data, config, start_step=0, streams=objective_streams(config))
    rows = []
    for _ in range(200):
        batch = next(batches)["mlm"]
        rows.append(batch["language"])
        real = batch["masked_weights"] > 0   # language i's blocks are all token 10 + i
        assert real.any() and np.all((batch["masked_ids"] == 10 + batch["language"][:, None])[real])
    languages_drawn = np.concatenate(rows)
    n = len(languages_drawn)
    realized = np.bincount(languages_drawn, minlength=len(languages)) / n
    q = np.array(data.probs)
    standard_errors = np.sqrt(q * (1 - q) / n)
    assert n == 6400 and np.all(np.abs(realized - q) < 4 * standard_errors), (realized, q)


def test_metrics_log_reports_realized_fractions(tmp_path, capsys):
    from xlm_jax.modes.metrics_log import MetricsLog

    config = default_config()
    mlm = types.SimpleNamespace(name="mlm", batch_name="mlm", stream_kind="blocks")   # what count_languages reads
    metrics_log = MetricsLog(str(tmp_path), config, 10, [mlm], ["el", "en", "sw"], [0.2, 0.7, 0.1])
    metrics_log.count_languages({"mlm": {"language": np.array([1, 1, 1, 0], np.int32)}})
    metrics_log.count_languages({"mlm": {"language": np.array([1, 0, 2, 1], np.int32)}})
    metrics_log.log_sampled(2)
    metrics_log.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record == {"step": 2, "sampled": {"el": 0.25, "en": 0.625, "sw": 0.125}, "sampled_examples": 8}
    out = capsys.readouterr().out
    assert "sampled/q over 8 examples: en 0.625/0.700, el 0.250/0.200, sw 0.125/0.100" in out


# --- prepare_data: n_i in sentences or tokens, the start-of-run table --------------------------------

CORPUS = {"en": ["ab ba"] * 200, "sw": ["abab baba abba " * 4] * 50}   # en: many short lines, sw: few long


def _prepare(tmp_path, train_tokenizer=False, **data_fields):
    from xlm_jax.data.prepare import prepare_data
    from xlm_jax.data.tokenizers import save_tokenizer
    from xlm_jax.data.wordpiece import WordPieceTokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for lang, lines in CORPUS.items():
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##a", "##b"]
    workdir = tmp_path / "run"
    workdir.mkdir(exist_ok=True)
    if not train_tokenizer:
        save_tokenizer(WordPieceTokenizer(vocab), workdir)   # a tokenizer in the workdir is reused, not trained
    config = default_config()
    config.data.corpus_dir, config.data.seq_len, config.data.alpha = str(corpus), 16, 1.0
    config.data.eval_sentences_per_language, config.data.shards = 0, 1   # one stream a language, as counted below
    config.model.vocab_size, config.train.num_steps, config.train.batch_size = len(vocab), 100, 8
    config.data.update(data_fields)
    validate(config)
    logs = []
    return prepare_data(config, str(workdir), log=logs.append), "\n".join(logs)


def _table_rows(log):
    table = log.split("language sampling")[1].splitlines()
    return {line.split()[0]: line.split()[1:] for line in table[2:5]}


def test_sentence_counts_and_start_table(tmp_path):
    data, log = _prepare(tmp_path)
    assert data.counts == {"en": 200, "sw": 50}
    assert data.probs == pytest.approx([0.8, 0.2])
    assert "(alpha=1.0, n_i in sentences)" in log
    blocks = {lang: len(shards[0]) for lang, shards in zip(data.languages, data.train_blocks)}
    rows = _table_rows(log)
    for lang, q in (("en", 0.8), ("sw", 0.2)):   # epochs = q_i * 100 steps * 8 / blocks_i
        assert rows[lang] == [f"{data.counts[lang]:,}", f"{data.counts[lang] / 250:.4f}", f"{q:.4f}",
                              f"{blocks[lang]:,}", f"{q * 800 / blocks[lang]:.3g}"]


def test_token_counts_are_the_packed_training_tokens(tmp_path):
    data, log = _prepare(tmp_path, sampling_unit="tokens", language_caps="sw:0.6")
    # en: "ab ba" -> a ##b b ##a + [SEP] = 5 tokens a line; sw: 12 words of 4 letters + [SEP] = 49;
    # plus one [CLS] per packed block (15 tokens after it)
    en_blocks, sw_blocks = -(-200 * 5 // 15), -(-50 * 49 // 15)
    assert [len(shards[0]) for shards in data.train_blocks] == [en_blocks, sw_blocks]
    assert data.counts == {"en": 200 * 5 + en_blocks, "sw": 50 * 49 + sw_blocks}
    share = data.counts["sw"] / sum(data.counts.values())
    assert share > 0.6 and data.probs == pytest.approx([0.4, 0.6])   # sw capped
    assert "(alpha=1.0, n_i in tokens, caps sw:0.6)" in log
    assert _table_rows(log)["sw"][:3] == [f"{data.counts['sw']:,}", f"{share:.4f}", "0.6000"]


def test_bounds_of_languages_not_in_the_corpus_fail_at_data_prep(tmp_path):
    with pytest.raises(ConfigError, match=r"data.language_caps.*no training text for fr; languages of the "
                                          r"corpus: en, sw"):
        _prepare(tmp_path, language_caps="fr:0.1")


def test_the_tokenizer_is_trained_on_the_same_q(tmp_path, monkeypatch):
    from xlm_jax.data import prepare
    from xlm_jax.data.wordpiece import WordPieceTokenizer

    seen = {}

    def fake_training(sentences_by_language, probs, *args, **kwargs):
        seen.update(probs)
        return WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##a", "##b"])

    monkeypatch.setattr(prepare, "train_sentencepiece", fake_training)
    data, _ = _prepare(tmp_path, train_tokenizer=True, language_floors="sw:0.5")
    assert seen == pytest.approx({"en": 0.5, "sw": 0.5}) and data.probs == pytest.approx([0.5, 0.5])
