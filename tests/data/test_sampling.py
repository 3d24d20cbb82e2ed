"""Temperature sampling against hand-computed probabilities."""
import pytest

from xlm_jax.data.sampling import sampling_table, temperature_probs
from xlm_jax.errors import DataError


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
    table = sampling_table({"sw": 10, "en": 1000}, 0.3)
    lines = table.splitlines()
    assert lines[1].split() == ["en", "1,000", "0.9901", "0.7992"]
    assert lines[2].split() == ["sw", "10", "0.0099", "0.2008"]
