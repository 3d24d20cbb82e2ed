"""MaskedLM / Encoder: parameter layout and a numpy re-implementation of the forward pass."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import (PAD, jit_apply, np_fairseq_positions, np_forward, np_mean_cross_entropy,
                           param_shapes, random_batch, random_ids, random_params, tiny_config)
from xlm_jax.models.encoder import fairseq_position_ids
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.objectives.mlm import mlm_loss_terms

# The shapes the brief's reference model must have (3 layers, hidden 96, 6 heads).
L, H, NH, MLP, V = 3, 96, 6, 192, 101
VP = 128   # V padded to model.vocab_pad_multiple: the model layout's vocabulary rows


def reference_config(**model_overrides):
    """The brief's reference model, XLM-R dropout included (inactive when deterministic)."""
    config = tiny_config(num_layers=L, hidden_size=H, num_heads=NH, mlp_dim=MLP, vocab_size=V,
                         max_len=512, seq_len=12, batch_size=4, dropout=0.1)
    for key, value in model_overrides.items():
        config.model[key] = value
    return config


def test_param_tree_shapes_and_logical_axes():
    config = reference_config()
    model = MaskedLM(config.model)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))["params"]
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(boxed))
    hd = H // NH
    layer = {
        "attention": {
            **{n: {"kernel": (L, H, NH, hd), "bias": (L, NH, hd)} for n in ("query", "key", "value")},
            "output": {"kernel": (L, NH, hd, H), "bias": (L, H)},
        },
        "attention_LayerNorm": {"scale": (L, H), "bias": (L, H)},
        "intermediate": {"kernel": (L, H, MLP), "bias": (L, MLP)},
        "output": {"kernel": (L, MLP, H), "bias": (L, H)},
        "output_LayerNorm": {"scale": (L, H), "bias": (L, H)},
    }
    expected = {
        "encoder": {
            "embeddings": {
                "word_embeddings": {"embedding": (VP, H)},
                "position_embeddings": {"embedding": (512 + 2, H)},   # fairseq: max_len + pad + 1
                "token_type_embeddings": {"embedding": (1, H)},
                "LayerNorm": {"scale": (H,), "bias": (H,)},
            },
            "layers": {"layer": layer},
        },
        "lm_head": {
            "dense": {"kernel": (H, H), "bias": (H,)},
            "LayerNorm": {"scale": (H,), "bias": (H,)},
            "bias": (VP,),
        },
    }
    assert shapes == expected
    # Scanned weights carry the `layers` logical axis first; the rest name their axes.
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["encoder"]["layers"]["layer"]["intermediate"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(specs["encoder"]["layers"]["layer"]["attention"]["query"]["kernel"]) == (
        "layers", "embed", "heads", "kv")
    assert tuple(specs["encoder"]["embeddings"]["word_embeddings"]["embedding"]) == ("vocab", "embed")
    for path, spec in jax.tree_util.tree_flatten_with_path(
            specs["encoder"]["layers"], is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]:
        assert spec[0] == "layers", path
    # Params are float32 whatever the compute dtype.
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.meta.unbox(boxed)))


def test_bert_position_table_has_max_len_rows():
    shapes = nn.meta.unbox(param_shapes(reference_config(position_offset=0)))
    assert shapes["encoder"]["embeddings"]["position_embeddings"]["embedding"].shape == (512, H)


def _language_kwargs(seq_len=12):
    return {"language_ids": jnp.zeros((1, seq_len), jnp.int32)}


@pytest.mark.parametrize("variant", ["xlmr", "bert", "xlm_languages"])
def test_forward_matches_numpy_reference(variant):
    """The main correctness test: every parameter (random, biases too) enters the numpy reference."""
    overrides = {"xlmr": {}, "bert": {"position_offset": 0, "type_vocab_size": 2},
                 "xlm_languages": {"num_languages": 3}}[variant]
    config = reference_config(**overrides)
    _, params = random_params(config, seed=1, **(_language_kwargs() if config.model.num_languages else {}))
    rng = np.random.default_rng(2)
    ids = random_ids(rng, 4, 12, V, lengths=[12, 7, 10, 3])   # padding in rows 1-3
    kwargs = {}
    if variant == "bert":
        kwargs["token_type_ids"] = (np.arange(12)[None, :] >= 5).astype(np.int32).repeat(4, 0)
    if variant == "xlm_languages":
        kwargs["language_ids"] = rng.integers(0, 3, (4, 1)).repeat(12, 1).astype(np.int32)

    logits, hidden = jit_apply(config)({"params": params}, jnp.asarray(ids), output_hidden_states=True,
                                       **{k: jnp.asarray(v) for k, v in kwargs.items()})
    ref_logits, ref_hidden = np_forward(params, ids, config.model, **kwargs)

    assert logits.shape == (4, 12, VP) and logits.dtype == jnp.float32
    assert hidden.shape == (L + 1, 4, 12, H)
    np.testing.assert_allclose(np.asarray(hidden), ref_hidden, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(logits)[..., :V], ref_logits, atol=1e-4, rtol=0)
    assert np.abs(ref_logits).std() > 0.3   # the comparison is not between near-zero numbers


def test_explicit_attention_mask_matches_numpy_reference():
    """A mask that is not `ids != pad`: two real tokens hidden from every query."""
    config = reference_config()
    _, params = random_params(config, seed=3)
    ids = random_ids(np.random.default_rng(4), 2, 12, V, lengths=[12, 9])
    mask = ids != PAD
    mask[0, 4:6] = False
    logits = jit_apply(config)({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    ref_logits, _ = np_forward(params, ids, config.model, attention_mask=mask)
    np.testing.assert_allclose(np.asarray(logits)[..., :V], ref_logits, atol=1e-4, rtol=0)
    default_logits, _ = np_forward(params, ids, config.model)
    assert np.abs(ref_logits - default_logits).max() > 1e-3   # the mask did change something


def test_fairseq_position_ids_hand_computed():
    ids = jnp.array([[5, 6, 7, 1, 1],
                     [0, 9, 2, 1, 1],
                     [0, 4, 4, 4, 2]], jnp.int32)
    expected = np.array([[2, 3, 4, 1, 1],
                         [2, 3, 4, 1, 1],
                         [2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(np.asarray(fairseq_position_ids(ids, 1)), expected)
    np.testing.assert_array_equal(np_fairseq_positions(np.asarray(ids), 1), expected)


@pytest.mark.parametrize("offset", [2, 0])
def test_default_position_ids(offset):
    """position_ids=None == hand-built ids: fairseq counting (offset 2) or arange (offset 0)."""
    config = reference_config(position_offset=offset)
    _, params = random_params(config, seed=5)
    ids = jnp.asarray(random_ids(np.random.default_rng(5), 2, 12, V, lengths=[12, 8]))
    if offset:
        positions = np.array([list(range(2, 14)), list(range(2, 10)) + [1] * 4])
    else:
        positions = np.array([list(range(12))] * 2)
    apply = jit_apply(config)
    default = apply({"params": params}, ids)
    explicit = apply({"params": params}, ids, position_ids=jnp.asarray(positions))
    np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
    shifted = apply({"params": params}, ids, position_ids=jnp.asarray(positions + 1))
    assert np.abs(np.asarray(shifted) - np.asarray(default)).max() > 1e-3   # positions matter


def test_masked_positions_gather_equals_full_logits():
    config = reference_config()
    _, params = random_params(config, seed=6)
    batch = random_batch(config, seed=7)
    ids, positions = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["masked_positions"])
    apply = jit_apply(config)
    full = np.asarray(apply({"params": params}, ids))
    gathered = np.asarray(apply({"params": params}, ids, positions))
    assert gathered.shape == positions.shape + (VP,)
    expected = np.take_along_axis(full, np.asarray(positions)[..., None], axis=1)
    np.testing.assert_allclose(gathered, expected, atol=1e-5, rtol=0)


def test_appending_padding_leaves_real_tokens_unchanged():
    config = reference_config()
    _, params = random_params(config, seed=8)
    ids = random_ids(np.random.default_rng(9), 3, 12, V, lengths=[12, 6, 9])
    longer = np.concatenate([ids, np.full((3, 5), PAD, np.int32)], axis=1)
    apply = jit_apply(config)
    short_logits, short_hidden = apply({"params": params}, jnp.asarray(ids), output_hidden_states=True)
    long_logits, long_hidden = apply({"params": params}, jnp.asarray(longer), output_hidden_states=True)
    real = ids != PAD
    np.testing.assert_allclose(np.asarray(long_logits)[:, :12][real], np.asarray(short_logits)[real],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(long_hidden)[:, :, :12][:, real],
                               np.asarray(short_hidden)[:, real], atol=1e-5, rtol=0)


def _loss_and_grads(config, params, batch):
    """Loss and grads with dropout on (same key), so remat must replay the same masks."""
    model = MaskedLM(config.model)

    def loss_fn(p):
        logits = model.apply({"params": p}, batch["input_ids"], batch["masked_positions"],
                             deterministic=False, rngs={"dropout": jax.random.key(3)})
        terms = mlm_loss_terms(logits, batch["masked_ids"], batch["masked_weights"])
        return terms["loss_sum"] / terms["count"]

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.fixture(scope="module")
def remat_case():
    """(config, params, batch, loss and grads without remat), computed once."""
    config = tiny_config(num_layers=2, dropout=0.1)
    _, params = random_params(config, seed=10)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, seed=11).items()}
    return config, params, batch, _loss_and_grads(config, params, batch)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_policies_give_same_loss_and_grads(remat_case, policy):
    config, params, batch, (loss, grads) = remat_case
    config = config.copy_and_resolve_references()
    config.model.remat = policy
    remat_loss, remat_grads = _loss_and_grads(config, params, batch)
    np.testing.assert_allclose(float(remat_loss), float(loss), rtol=1e-6)
    flat, remat_flat = (jax.tree_util.tree_flatten_with_path(g)[0] for g in (grads, remat_grads))
    assert [path for path, _ in flat] == [path for path, _ in remat_flat]
    for (path, g), (_, rg) in zip(flat, remat_flat):
        np.testing.assert_allclose(np.asarray(rg), np.asarray(g), atol=1e-6, rtol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_bfloat16_compute_is_close_to_float32():
    config = reference_config()
    _, params = random_params(config, seed=12)
    batch = random_batch(config, seed=13)
    ids, positions = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["masked_positions"])
    f32 = np.asarray(jit_apply(config)({"params": params}, ids, positions))[..., :V]
    bf16_config = reference_config(dtype="bfloat16")
    bf16_logits = jit_apply(bf16_config)({"params": params}, ids, positions)
    assert bf16_logits.dtype == jnp.bfloat16
    bf16 = np.asarray(bf16_logits.astype(jnp.float32))[..., :V]
    assert np.all(np.isfinite(bf16))
    # 8 mantissa bits: errors of a few percent of the logit scale, and the same ranking mostly.
    assert np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()
    assert np.corrcoef(bf16.ravel(), f32.ravel())[0, 1] > 0.99
    loss32 = np_mean_cross_entropy(f32, batch["masked_ids"], batch["masked_weights"])
    loss16 = np_mean_cross_entropy(bf16, batch["masked_ids"], batch["masked_weights"])
    assert abs(loss16 - loss32) < 0.02 * loss32


def test_language_embeddings_change_outputs():
    config = reference_config(num_languages=3)
    assert nn.meta.unbox(param_shapes(config, **_language_kwargs()))["encoder"]["embeddings"][
        "language_embeddings"]["embedding"].shape == (3, H)
    _, params = random_params(config, seed=14, **_language_kwargs())
    ids = jnp.asarray(random_ids(np.random.default_rng(14), 2, 12, V))
    apply = jit_apply(config)
    out0 = apply({"params": params}, ids, language_ids=jnp.zeros_like(ids))
    out0_again = apply({"params": params}, ids, language_ids=jnp.zeros_like(ids))
    out2 = apply({"params": params}, ids, language_ids=jnp.full_like(ids, 2))
    np.testing.assert_array_equal(np.asarray(out0), np.asarray(out0_again))
    assert np.abs(np.asarray(out0) - np.asarray(out2)).max() > 1e-3
    with pytest.raises(ValueError, match="language_ids"):
        apply({"params": params}, ids)
    # Without num_languages (XLM-R) there is no such table.
    plain = nn.meta.unbox(param_shapes(reference_config()))
    assert "language_embeddings" not in plain["encoder"]["embeddings"]


def test_dropout_only_when_not_deterministic():
    config = reference_config()
    assert config.model.dropout_rate == config.model.attention_dropout_rate == 0.1
    _, params = random_params(config, seed=15)
    ids = jnp.asarray(random_ids(np.random.default_rng(15), 2, 12, V, lengths=[12, 7]))
    apply = jit_apply(config)

    def run(deterministic, seed):
        return np.asarray(apply({"params": params}, ids, deterministic=deterministic,
                                rngs={"dropout": jax.random.key(seed)}))

    det_a, det_b = run(True, 0), run(True, 1)
    np.testing.assert_array_equal(det_a, det_b)
    np.testing.assert_array_equal(det_a, np.asarray(apply({"params": params}, ids)))
    ref_logits, _ = np_forward(params, np.asarray(ids), config.model)
    np.testing.assert_allclose(det_a[..., :V], ref_logits, atol=1e-4, rtol=0)   # deterministic = no dropout
    drop_a, drop_a_again, drop_b = run(False, 0), run(False, 0), run(False, 1)
    np.testing.assert_array_equal(drop_a, drop_a_again)
    assert np.abs(drop_a - drop_b).max() > 1e-3
    assert np.abs(drop_a - det_a).max() > 1e-3
    assert np.all(np.isfinite(drop_a))
