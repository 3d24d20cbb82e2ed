"""The padded vocabulary: rows past model.vocab_size change nothing a user or the loss sees.

The word embeddings and the MLM bias have padded_vocab_size rows so the vocab dim shards
evenly; the padded logit columns are masked, so softmax, argmax, the loss and every
gradient are those of the true vocabulary.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import np_mean_cross_entropy, param_shapes, random_batch, random_params, tiny_config
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.models.vocab_padding import padded_vocab_size, resize_vocab_rows, vocab_padding_params
from xlm_jax.objectives.mlm import mlm_loss_terms

V, VP = 102, 128   # 102 = 2 x 51: shards over tensor=2 only; padded, over 2, 4, ..., 128


def odd_vocab_config(**model_overrides):
    config = tiny_config(vocab_size=V)
    for key, value in model_overrides.items():
        config.model[key] = value
    return config


def word_rows(params):
    return params["encoder"]["embeddings"]["word_embeddings"]["embedding"]


@pytest.fixture(scope="module")
def case():
    """(config, params, batch); the padded bias entries are huge, so unmasked they would win."""
    config = odd_vocab_config()
    _, params = random_params(config, seed=30)
    params["lm_head"]["bias"] = params["lm_head"]["bias"].at[V:].set(1e4)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, seed=31).items()}
    return config, params, batch


def test_padded_vocab_size():
    assert padded_vocab_size(odd_vocab_config().model) == VP
    assert padded_vocab_size(tiny_config(vocab_size=250_002).model) == 250_112   # XLM-R: 1954 x 128
    assert padded_vocab_size(tiny_config(vocab_size=256).model) == 256
    assert padded_vocab_size(odd_vocab_config(vocab_pad_multiple=1).model) == V
    old = tiny_config(vocab_size=V).model.to_dict()      # a run's config written before the field
    del old["vocab_pad_multiple"]
    assert padded_vocab_size(type(tiny_config().model)(old)) == V


def test_vocab_padding_params_counts_exactly_the_padding():
    def count(config):
        return sum(x.size for x in jax.tree.leaves(nn.meta.unbox(param_shapes(config))))
    padded, unpadded = odd_vocab_config(), odd_vocab_config(vocab_pad_multiple=1)
    assert count(padded) - vocab_padding_params(padded.model) == count(unpadded)
    assert vocab_padding_params(padded.model) == (VP - V) * (32 + 1)


def test_param_layout_and_fresh_init_zeroes_the_padding():
    config = odd_vocab_config()
    shapes = nn.meta.unbox(param_shapes(config))
    assert word_rows(shapes).shape == (VP, 32) and shapes["lm_head"]["bias"].shape == (VP,)
    params = MaskedLM(config.model).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rows = np.asarray(nn.meta.unbox(word_rows(params)))
    assert not rows[V:].any() and rows[:V].std() > 0.01
    assert not np.asarray(nn.meta.unbox(params["lm_head"]["bias"])).any()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_padded_logits_are_the_most_negative_value_and_get_probability_zero(case, dtype):
    config, params, batch = case
    config = odd_vocab_config(dtype=dtype)
    logits = MaskedLM(config.model).apply({"params": params}, batch["input_ids"], batch["masked_positions"])
    assert logits.shape == batch["masked_positions"].shape + (VP,)
    padded = np.asarray(logits[..., V:].astype(jnp.float32))
    np.testing.assert_array_equal(padded, float(jnp.finfo(jnp.dtype(dtype)).min))
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
    np.testing.assert_array_equal(probs[..., V:], 0.0)
    np.testing.assert_allclose(probs[..., :V].sum(-1), 1.0, rtol=1e-5)
    assert np.asarray(jnp.argmax(logits, -1)).max() < V
    assert np.asarray(jax.lax.top_k(logits.astype(jnp.float32), V)[1]).max() < V


def test_loss_accuracy_and_gradients_are_those_of_the_true_vocabulary(case):
    config, params, batch = case
    model = MaskedLM(config.model)

    def loss_fn(p):
        logits = model.apply({"params": p}, batch["input_ids"], batch["masked_positions"])
        terms = mlm_loss_terms(logits, batch["masked_ids"], batch["masked_weights"])
        return terms["loss_sum"] / terms["count"], (terms, logits)

    (loss, (terms, logits)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    true_logits = np.asarray(logits)[..., :V]
    weights = np.asarray(batch["masked_weights"])
    assert float(loss) == pytest.approx(np_mean_cross_entropy(true_logits, batch["masked_ids"], weights),
                                        rel=1e-6)
    hits = true_logits.argmax(-1) == np.asarray(batch["masked_ids"])
    assert float(terms["correct"]) == (hits * weights).sum()
    # The padded rows get exactly zero gradient (even though their bias is huge); the true rows do not.
    for table in (word_rows(grads), grads["lm_head"]["bias"]):
        table = np.asarray(table)
        np.testing.assert_array_equal(table[V:], 0.0)
        assert np.abs(table[:V]).max() > 1e-4


def test_resize_vocab_rows_cuts_and_zero_pads_only_the_vocabulary_rows():
    _, params = random_params(odd_vocab_config(), seed=32)
    params = jax.tree.map(np.asarray, params)
    true = resize_vocab_rows(params, V)
    assert word_rows(true).shape == (V, 32) and true["lm_head"]["bias"].shape == (V,)
    np.testing.assert_array_equal(word_rows(true), word_rows(params)[:V])
    assert true["encoder"]["layers"] is params["encoder"]["layers"]         # the rest passes through
    padded = resize_vocab_rows(true, VP)
    np.testing.assert_array_equal(word_rows(padded)[:V], word_rows(params)[:V])
    assert not word_rows(padded)[V:].any() and not padded["lm_head"]["bias"][V:].any()
    encoder_only = {k: v for k, v in params.items() if k != "lm_head"}      # a bare encoder import
    assert "lm_head" not in resize_vocab_rows(encoder_only, V)


def test_predict_masked_never_returns_a_padding_id():
    """Byte vocabulary: 261 ids in 384 rows. Asked for more than 261, it gives the 261 real ones."""
    from xlm_jax.api import Model
    from xlm_jax.data.tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer()
    config = tiny_config(vocab_size=tokenizer.vocab_size)
    _, params = random_params(config, seed=33)
    params["lm_head"]["bias"] = params["lm_head"]["bias"].at[tokenizer.vocab_size:].set(1e4)
    (predictions,) = Model(config, params, tokenizer, step=0).predict_masked("a <mask> b", top_k=300)
    assert len(predictions) == tokenizer.vocab_size
    assert len({piece for piece, _ in predictions}) == tokenizer.vocab_size
    assert sum(prob for _, prob in predictions) == pytest.approx(1.0, rel=1e-5)
