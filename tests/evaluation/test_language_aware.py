"""Evaluation in the run's languages: codes resolved to the run's names, each text tokenized by its
language's tokenizer and fed with its language id; refused where a per-language model lacks it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.evaluation.conftest import PRETRAIN_LANGUAGES, random_subject
from tests.helpers import random_params, tiny_config
from xlm_jax import api
from xlm_jax.data.language_ranges import LanguageRangeTokenizer
from xlm_jax.data.tokenizers import ByteTokenizer
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import finetune
from xlm_jax.evaluation.encoding import make_context, token_rows
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.registry import evaluator_options
from xlm_jax.evaluation.languages import read_run_languages, record_run_languages, resolve_language
from xlm_jax.evaluation.retrieval import Retrieval
from xlm_jax.evaluation.runner import EvaluationRunner
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules

RUN_LANGUAGES = ("de", "en")   # language id 0 and 1
TEXTS = ["Hallo Welt", "Guten Morgen", "eins zwei drei", "Wasser", "Haus am See", "ja"]


def test_resolver_maps_data_codes_to_the_runs_languages():
    run = ["de", "en", "sw", "zh_CN"]
    assert resolve_language("de", run) == ("de", 0)                     # the same name
    assert resolve_language("deu", run) == ("de", 0)                    # ISO 639-3 -> 639-1
    assert resolve_language("eng", run) == ("en", 1)
    assert resolve_language("swh", run) == ("sw", 2)                    # Tatoeba's Swahili
    assert resolve_language("cmn", run) == ("zh_CN", 3)                 # the run's only Chinese
    assert resolve_language("zho-CN", ["zh_CN", "zh_TW"]) == ("zh_CN", 0)   # NTREX: language and region
    assert resolve_language("por", ["pt", "pt_BR"]) == ("pt", 0)        # the bare code over a variant
    assert resolve_language("yor", run) is None and resolve_language("xx", run) is None
    with pytest.raises(ConfigError, match=r"'por' could be any of the run's pt_BR, pt_PT"):
        resolve_language("por", ["pt_BR", "pt_PT"])


@pytest.fixture(scope="module")
def two_language_subject() -> Subject:
    """A tiny byte MaskedLM whose output depends on the language twice over: each language has its
    own id range (LanguageRangeTokenizer) and its own language embedding (num_languages=2)."""
    tokenizer = LanguageRangeTokenizer(ByteTokenizer(), RUN_LANGUAGES)
    config = tiny_config(vocab_size=tokenizer.vocab_size, max_len=64, seq_len=32)
    config.model.num_languages = 2
    _, params = random_params(config, language_ids=jnp.zeros((1, 32), jnp.int32))
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    return Subject(config.model, params, tokenizer, mesh, logical_axis_rules("dp"), languages=RUN_LANGUAGES)


def direct_vectors(subject: Subject, texts, language: str) -> np.ndarray:
    """Mean over each text's tokens of hidden state 1, from one direct model call on the texts padded
    to 32 tokens, with `language`'s ids and language id: what the encoder must reproduce."""
    rows = token_rows(subject.tokenizer.for_language(language), texts, 32)
    ids = np.full((len(rows), 32), subject.tokenizer.pad_id, np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    apply = jax.jit(lambda p, i, l: MaskedLM(subject.model_config).apply(
        {"params": p}, i, language_ids=l, method=MaskedLM.hidden_states)[1][1])
    hidden = np.asarray(apply(subject.params, ids, np.full_like(ids, RUN_LANGUAGES.index(language))), np.float64)
    real = (ids != subject.tokenizer.pad_id)[:, :, None]
    return (hidden * real).sum(1) / real.sum(1)


def test_encode_tokenizes_and_feeds_each_language_as_its_own(two_language_subject):
    context = make_context(two_language_subject)
    german = context.encode(TEXTS, layers=(1,), language="deu")[0]
    english = context.encode(TEXTS, layers=(1,), language="en")[0]
    np.testing.assert_allclose(german, direct_vectors(two_language_subject, TEXTS, "de"), atol=2e-5)
    np.testing.assert_allclose(english, direct_vectors(two_language_subject, TEXTS, "en"), atol=2e-5)
    assert np.abs(german - english).max() > 1e-2                      # the language changes the vectors
    de_ids = two_language_subject.tokenizer.for_language("de").encode(["ja"])[0]
    en_ids = two_language_subject.tokenizer.for_language("en").encode(["ja"])[0]
    assert not set(de_ids) & set(en_ids)                              # no shared ids to fall back on
    mixed = context.encode(TEXTS[:2] + TEXTS[:2], layers=(1,), language=["de", "de", "eng", "eng"])[0]
    np.testing.assert_array_equal(mixed, np.concatenate([german[:2], english[:2]]))   # one language per text


def test_retrieval_encodes_each_side_in_its_language(two_language_subject, tmp_path):
    """Both sides hold the same strings: with shared ids they would retrieve each other perfectly;
    the score must be the one of the German side read as German and the English side as English."""
    (tmp_path / "a.de").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    (tmp_path / "b.en").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    retrieval = Retrieval("retrieval", evaluator_options("retrieval", data=f"{tmp_path}/a.de|{tmp_path}/b.en",
                                                         layer="1", random_init_baseline=False))
    result = EvaluationRunner([retrieval], log=lambda _: None).run(two_language_subject)["retrieval"]
    x, y = direct_vectors(two_language_subject, TEXTS, "de"), direct_vectors(two_language_subject, TEXTS, "en")
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
    gold = np.arange(len(TEXTS))
    expected = {"acc_xx_to_en": np.mean(cos.argmax(1) == gold), "acc_en_to_xx": np.mean(cos.argmax(0) == gold)}
    assert min(expected.values()) < 1.0                               # unlike shared ids, which give 1.0
    for metric, value in expected.items():
        assert result["per_language"]["de"][metric] == pytest.approx(value)


def test_a_language_the_run_lacks_is_refused_before_anything_runs(two_language_subject, tmp_path):
    (tmp_path / "a.fr").write_text("un\ndeux\n", encoding="utf-8")
    (tmp_path / "b.en").write_text("one\ntwo\n", encoding="utf-8")
    retrieval = Retrieval("tatoeba", evaluator_options("retrieval", data=f"{tmp_path}/a.fr|{tmp_path}/b.en"))
    with pytest.raises(ConfigError, match=r"`evals\.tatoeba\.languages`: the model cannot encode fr.*languages: de, en"):
        EvaluationRunner([retrieval], log=lambda _: None).run(two_language_subject)
    with pytest.raises(DataError, match=r"language 'fra' is not one of the model's languages \(de, en\)"):
        make_context(two_language_subject).encode(["un"], language="fra")


def test_a_model_that_uses_no_languages_encodes_any_language_as_before():
    subject = random_subject()
    context = make_context(subject)
    np.testing.assert_array_equal(context.encode(TEXTS, language="fra"), context.encode(TEXTS))


def test_finetuning_batches_carry_each_examples_language_id():
    examples = finetune.Examples(ids=[np.array([0, 9, 2]), np.array([0, 8, 7, 2])], labels=[1, 0], language_ids=[1, 0])
    batch = finetune.padded_batch(examples, [0, 1], rows=3, length=5, pad_id=1)
    np.testing.assert_array_equal(batch["language_ids"], [[1] * 5, [0] * 5, [0] * 5])
    assert examples.head(1).language_ids == [1]


def test_run_languages_are_recorded_once_and_read_back(tmp_path, pretrained_run):
    assert read_run_languages(str(tmp_path)) == ()                    # a run from before the file
    record_run_languages(str(tmp_path), ["de", "en"], log=lambda _: None)
    assert json.loads((tmp_path / "languages.json").read_text()) == {"languages": ["de", "en"]}
    assert read_run_languages(str(tmp_path)) == ("de", "en")
    assert read_run_languages(str(pretrained_run)) == tuple(sorted(PRETRAIN_LANGUAGES))   # written by training
    assert api.load(str(pretrained_run), log=lambda _: None).subject.languages == tuple(sorted(PRETRAIN_LANGUAGES))
