"""Sentence encoding: bucketed and sharded, equal to one-sentence-at-a-time pooling."""
import jax
import numpy as np
import pytest

from tests.evaluation.conftest import random_subject
from xlm_jax.evaluation.encoding import SentenceEncoder, make_context, middle_layer, resolve_layers, token_rows
from xlm_jax.models.masked_lm import MaskedLM


@pytest.fixture(scope="module")
def sentences(shared_data) -> list[str]:
    lines = (shared_data / "tatoeba" / "tatoeba.deu-eng.deu").read_text(encoding="utf-8").splitlines()
    return lines[:37] + ["", "x" * 300]   # an empty sentence, and one longer than the model


def reference(subject, texts, layers, pooling) -> np.ndarray:
    """The naive way: every sentence padded to the longest, one batch through the whole MaskedLM,
    all hidden states to the host, pooled there."""
    rows = token_rows(subject.tokenizer, texts, subject.model_config.max_len)
    ids = np.full((len(rows), max(map(len, rows))), subject.tokenizer.pad_id, np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    apply = jax.jit(lambda p, x: MaskedLM(subject.model_config).apply({"params": p}, x, output_hidden_states=True))
    hidden = np.asarray(apply(subject.params, ids)[1])[list(layers)]         # [k, N, S, H]
    if pooling == "first":
        return hidden[:, :, 0]
    mask = (ids != subject.tokenizer.pad_id)[None, :, :, None]
    return (hidden * mask).sum(2) / mask.sum(2)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_vectors_equal_the_naive_padded_batch(sentences, pooling):
    subject = random_subject()
    vectors = make_context(subject).encode(sentences, layers=(0, 1, 2), pooling=pooling)
    assert vectors.shape == (3, len(sentences), subject.model_config.hidden_size)
    np.testing.assert_allclose(vectors, reference(subject, sentences, (0, 1, 2), pooling), atol=2e-5)


def test_eight_devices_give_the_vectors_of_one(sentences):
    one = make_context(random_subject(devices=1)).encode(sentences, layers=(1,))
    eight = make_context(random_subject(devices=8)).encode(sentences, layers=(1,))
    np.testing.assert_allclose(eight, one, atol=1e-5)


def test_lower_layers_run_alone_give_the_same_vectors(sentences):
    subject = random_subject()
    encoder = SentenceEncoder(subject.model_config, subject.tokenizer, subject.mesh, subject.rules)
    np.testing.assert_allclose(encoder(subject.params, sentences, (1,)), encoder(subject.params, sentences, (1, 2))[:1],
                               atol=1e-6)


def test_new_lengths_in_known_buckets_compile_nothing(sentences):
    subject = random_subject()
    encoder = SentenceEncoder(subject.model_config, subject.tokenizer, subject.mesh, subject.rules, batch_tokens=512)
    encoder(subject.params, sentences, (2,))
    compiled = encoder._pool_fn((2,), "mean")._cache_size()
    encoder(subject.params, [s[:-1] for s in sentences[:30]] + sentences[30:], (2,))   # other lengths, same buckets
    assert encoder._pool_fn((2,), "mean")._cache_size() == compiled
    assert compiled <= len(encoder.buckets)   # one shape per bucket


def test_layers_and_edge_cases():
    assert middle_layer(12) == 7 and middle_layer(3) == 2 and middle_layer(1) == 1
    assert resolve_layers(None, 12) == (7,) and resolve_layers(-1, 12) == (12,) and resolve_layers((0, -2), 4) == (0, 3)
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        resolve_layers(5, 4)
    context = make_context(random_subject())
    assert context.encode([], layers=(1, 2)).shape == (2, 0, 32)
    with pytest.raises(ValueError, match="pooling 'max'"):
        context.encode(["a"], pooling="max")
