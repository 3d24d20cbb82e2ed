"""The word_translation evaluator against a numpy re-implementation on hand-made embeddings, and
its errors. Two languages over a byte base (P = 256): Fake-English row i is English row i plus
noise for some words and another word's row for the rest, so the answer is known in advance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import np_forward, random_params, tiny_config
from xlm_jax.data.language_ranges import LanguageRangeTokenizer
from xlm_jax.data.tokenizers import ByteTokenizer
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation.encoding import make_context
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.registry import EVALUATORS, evaluator_options
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules

P, WORDS_MOVED = 256, 100   # byte base: 256 ordinary ids per language; the first 100 swapped around


def subject(shared: bool = False) -> Subject:
    """A one-layer model whose qfe word rows are the en rows (+ noise), the first WORDS_MOVED
    of them rolled by one, so those translate wrongly at the embeddings."""
    tokenizer = ByteTokenizer() if shared else LanguageRangeTokenizer(ByteTokenizer(), ("en", "qfe"))
    config = tiny_config(num_layers=1, hidden_size=16, num_heads=2, mlp_dim=32, vocab_size=tokenizer.vocab_size,
                         max_len=16, seq_len=8)
    _, params = random_params(config, seed=1)
    params = jax.tree.map(np.array, params)
    rows = params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    if not shared:
        english = rows[4:4 + P].copy()
        fake = english + np.random.default_rng(2).normal(0, 0.02, english.shape)
        fake[:WORDS_MOVED] = np.roll(english[:WORDS_MOVED], 1, axis=0)
        rows[4 + P:4 + 2 * P] = fake
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    return Subject(config.model, jax.tree.map(jnp.asarray, params), tokenizer, mesh, logical_axis_rules("dp"),
                   languages=("en", "qfe"))


def evaluate(target_subject: Subject, **options):
    evaluator = EVALUATORS["word_translation"]("words", evaluator_options("word_translation", **options))
    evaluator.check()
    return evaluator.evaluate(make_context(target_subject, log=lambda message: None))


def numpy_precision(model_subject: Subject, layer: int, words: int) -> tuple[float, float]:
    """(p@1 qfe -> en, en -> qfe) by loops: each word alone as `<s> w </s>`, its state at `layer`."""
    tokenizer, config = model_subject.tokenizer, model_subject.model_config
    vectors = {}
    for language, offset in (("en", 0), ("qfe", P)):
        own = tokenizer.for_language(language)
        ids = np.array([[own.bos_id, 4 + offset + k, own.eos_id] for k in range(words)])
        _, hidden = np_forward(model_subject.params, ids, config)
        states = hidden[layer][:, 1]
        vectors[language] = states / np.linalg.norm(states, axis=1, keepdims=True)

    def precision(queries, index):
        return float(np.mean([int(np.argmax(index @ q)) == i for i, q in enumerate(queries)]))

    return precision(vectors["qfe"], vectors["en"]), precision(vectors["en"], vectors["qfe"])


def test_matches_the_numpy_reimplementation_at_every_layer():
    model_subject = subject()
    result = evaluate(model_subject, languages="qfe-en", layer="0,1")
    for layer in (0, 1):
        expected = numpy_precision(model_subject, layer, P)
        got = result.per_language["qfe"]
        suffix = "" if layer == 0 else f"_layer{layer}"
        assert got[f"p1_layer{layer}"] == pytest.approx(np.mean(expected))
        if not suffix:
            assert (got["p1_xx_to_en"], got["p1_en_to_xx"]) == pytest.approx(expected)
    moved_out = 1 - WORDS_MOVED / P   # at the embeddings, about the words left in place translate
    assert abs(result.per_language["qfe"]["p1"] - moved_out) < 0.1
    assert result.chance == {"qfe": {metric: 1 / P for metric in result.per_language["qfe"]}}
    assert result.details["words"] == P and result.summary["p1"] == result.per_language["qfe"]["p1"]


def test_max_words_takes_the_first_ids():
    model_subject = subject()
    result = evaluate(model_subject, languages="qfe-en", layer="0", max_words=50)
    assert result.details["words"] == 50 and result.chance["qfe"]["p1"] == 1 / 50
    expected = numpy_precision(model_subject, 0, 50)
    assert result.per_language["qfe"]["p1"] == pytest.approx(np.mean(expected))
    assert result.per_language["qfe"]["p1"] < 0.1   # the first 50 are all rolled: none translates


@pytest.mark.parametrize("options, message", [
    ({"languages": "qfe"}, r"`evals.words.languages`: 'qfe'; name two of the run's languages as src-tgt"),
    ({"languages": "en-en"}, r"`evals.words.languages`"),
    ({"languages": "qfe-en", "max_words": 1}, r"`evals.words.max_words`: 1"),
    ({"languages": "qfe-en", "layer": "deep"}, r"`evals.words.layer`"),
])
def test_bad_options_name_the_field(options, message):
    with pytest.raises(ConfigError, match=message):
        EVALUATORS["word_translation"]("words", evaluator_options("word_translation", **options)).check()


def test_a_shared_vocabulary_has_no_word_translation():
    with pytest.raises(DataError, match=r"`words` \(word_translation\).*shares its vocabulary.*"
                                        r"data.language_id_ranges=True"):
        evaluate(subject(shared=True), languages="qfe-en")
