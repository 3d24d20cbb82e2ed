"""Pseudo-perplexity: PLL against an unjitted float64 forward pass per masked copy, device-count
invariance, a trained model against its random init, and every user-facing error."""
import dataclasses
import math

import numpy as np
import pytest

from tests.evaluation.conftest import random_subject
from tests.helpers import np_forward, random_params, tiny_config
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import perplexity
from xlm_jax.evaluation.encoding import make_context, token_rows
from xlm_jax.evaluation.registry import evaluator_options
from xlm_jax.evaluation.perplexity import PseudoLikelihood, PseudoPerplexity
from xlm_jax.evaluation.subjects import random_init_subject

SENTENCES = ["Habari", "Jambo dunia, habari za asubuhi?", "Ndiyo ü", "Mungu ni mwema sana kwa wote, kila siku."]


def evaluator(**options) -> PseudoPerplexity:
    ev = PseudoPerplexity("ppl", evaluator_options("pseudo_perplexity", **options))
    ev.check()
    return ev


def random_weights_subject(devices: int = 1):
    """random_subject with every parameter drawn at random (biases, LayerNorm too): a peaked,
    input-dependent distribution, unlike a fresh init's near-uniform one."""
    subject = random_subject(devices=devices)
    config = tiny_config(num_layers=2, hidden_size=32, vocab_size=subject.tokenizer.vocab_size,
                         max_len=128, seq_len=64)
    return dataclasses.replace(subject, params=random_params(config, seed=3)[1])


def reference_pll(subject, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sentence: sum of log P(original) and argmax hits, one float64 forward pass per masked copy."""
    t = subject.tokenizer
    plls, hits = [], []
    for row in token_rows(t, texts, max_len):
        pll = hit = 0.0
        for position in np.flatnonzero(~np.isin(row, t.special_ids)):
            masked = row.copy()
            masked[position] = t.mask_id
            logits = np_forward(subject.params, masked[None], subject.model_config)[0][0, position]
            log_probs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            pll += log_probs[row[position]]
            hit += float(np.argmax(logits) == row[position])
        plls.append(pll)
        hits.append(hit)
    return np.array(plls), np.array(hits)


def test_pll_matches_a_forward_pass_per_masked_copy(monkeypatch, tmp_path):
    subject = random_weights_subject()
    monkeypatch.setattr(perplexity, "ROW_TOKENS", 64)     # many small calls across 3 length buckets
    expected_pll, expected_hits = reference_pll(subject, SENTENCES, max_len=40)
    scorer = PseudoLikelihood(subject.model_config, subject.tokenizer, subject.mesh, subject.rules)
    pll, hits, counts = scorer(subject.params, token_rows(subject.tokenizer, SENTENCES, 40))
    np.testing.assert_allclose(pll, expected_pll, rtol=1e-4)
    np.testing.assert_array_equal(hits, expected_hits)
    assert counts.tolist() == [6, 31, 8, 38]                # bytes ("ü" is 2), truncated at 40 - 2
    # the random weights are far from uniform (mean log-prob -5.95 vs -5.55), so a wrong logit would show
    assert abs(expected_pll.sum() / counts.sum() + math.log(subject.tokenizer.vocab_size - 4)) > 0.2

    path = tmp_path / "sw.txt"
    path.write_text("\n".join([SENTENCES[0], "", *SENTENCES[1:]]) + "\n", encoding="utf-8")   # a blank line skipped
    result = evaluator(files=f"sw:{path}", max_len=40).evaluate(make_context(subject))
    metrics = result.per_language["sw"]
    assert metrics["pseudo_perplexity"] == pytest.approx(math.exp(-expected_pll.sum() / counts.sum()), rel=1e-4)
    assert metrics["mlm_accuracy"] == pytest.approx(expected_hits.sum() / counts.sum())
    # the text scored: 6 + 31 + 7 + 38 characters ("ü" one character; the last line cut at 38 bytes), 16 words
    assert metrics["nats_per_char"] == pytest.approx(-expected_pll.sum() / 82, rel=1e-4)
    assert metrics["tokens_per_word"] == pytest.approx(83 / 16)
    assert result.details["sw"] == {"sentences": 4, "tokens": 83, "pll": pytest.approx(expected_pll.sum(), rel=1e-4)}
    assert result.data_files == [str(path)]


def test_same_numbers_on_1_and_8_devices(shared_data):
    files = f"sw:{shared_data / 'mono' / 'sw.txt'},{shared_data / 'mono' / 'el.txt'}"
    results = [evaluator(files=files, max_sentences=12, max_len=48).evaluate(make_context(random_weights_subject(n)))
               for n in (1, 8)]
    assert sorted(results[0].per_language) == ["el", "sw"]
    for language in ("el", "sw"):
        for metric, value in results[0].per_language[language].items():
            assert results[1].per_language[language][metric] == pytest.approx(value, rel=1e-5), (language, metric)


def test_trained_model_beats_its_random_init_on_unseen_text(pretrained_subject, shared_data, tmp_path):
    # pretrained on the first 3000 lines of each language: score lines it never saw
    unseen = (shared_data / "mono" / "sw.txt").read_text(encoding="utf-8").splitlines()[5000:5100]
    path = tmp_path / "sw_unseen.txt"
    path.write_text("\n".join(unseen) + "\n", encoding="utf-8")
    ev = evaluator(files=f"sw:{path}", max_sentences=40, max_len=64)
    trained = ev.evaluate(make_context(pretrained_subject)).per_language["sw"]
    untrained = ev.evaluate(make_context(random_init_subject(pretrained_subject))).per_language["sw"]
    print(f"sw pseudo-perplexity: trained {trained}, random-init {untrained}")
    vocab = pretrained_subject.tokenizer.vocab_size
    assert untrained["pseudo_perplexity"] == pytest.approx(vocab, rel=0.2)   # a fresh init is near uniform
    assert trained["pseudo_perplexity"] < untrained["pseudo_perplexity"] / 3     # measured: 354 vs 2016
    assert trained["mlm_accuracy"] > untrained["mlm_accuracy"] + 0.03           # measured: 0.057 vs 0.0005


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"evals\.ppl\.files"):
        evaluator()
    with pytest.raises(DataError, match="missing.txt: sw text not found"):
        evaluator(files=f"sw:{tmp_path / 'missing.txt'}")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="blank.txt: only blank lines"):
        evaluator(files=str(blank))
    text = tmp_path / "sw.txt"
    text.write_text("Habari\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"evals\.ppl\.files.*'sw' is given twice"):
        evaluator(files=f"{text},sw:{text}")
    with pytest.raises(ConfigError, match=r"evals\.ppl\.max_sentences"):
        evaluator(files=str(text), max_sentences=0)
    with pytest.raises(ConfigError, match=r"evals\.ppl\.max_len`: 512 is longer than the model's max_len 128"):
        evaluator(files=str(text), max_len=512).evaluate(make_context(random_subject()))
