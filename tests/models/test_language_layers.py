"""model.language_specific_layers = k: the bottom k layers have a copy per language, the top
num_layers - k are shared (Wu, Conneau et al. 2020, "Emerging cross-lingual structure").

Checked against counted parameters, a shared model whose weights the copies repeat, and an
explicit per-layer, per-language loop of plain EncoderLayers; then through the real train
loop (fsdp over the 8 fake devices, checkpoint, resume, load).
"""
import functools
import pathlib
import re
import shutil
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.helpers import (PAD, jit_apply, np_forward, param_shapes, random_ids, random_params, tiny_config,
                           write_corpus)
from xlm_jax.config import sibling_config
from xlm_jax.modes.prepare import validate
from xlm_jax.errors import ConfigError
from xlm_jax.interop.hf import export_hf
from xlm_jax.models.encoder import EncoderLayer, Embeddings
from xlm_jax.models.masked_lm import MaskedLM, truncated
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.models import flops as flops_lib

L, H, HEADS, MLP, V, LANGUAGES = 3, 32, 2, 64, 100, 2
VP, MAX_LEN = 128, 32   # V padded to model.vocab_pad_multiple; position rows are MAX_LEN + 2
# One post-LN block, counted from its tensors: query, key, value and output (H x H + H each),
# the FFN's two matmuls (H x F + F, F x H + H) and two LayerNorms (scale and bias, H each).
BLOCK = 4 * (H * H + H) + (H * MLP + MLP) + (MLP * H + H) + 2 * 2 * H
# Word rows (padded), positions, one token type, a row per language, the LayerNorm.
EMBEDDINGS = VP * H + (MAX_LEN + 2) * H + H + LANGUAGES * H + 2 * H
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def config_with(k: int):
    config = tiny_config(num_layers=L, hidden_size=H, num_heads=HEADS, mlp_dim=MLP, vocab_size=V,
                         max_len=MAX_LEN, seq_len=16, batch_size=4)
    config.model.num_languages, config.model.language_specific_layers = LANGUAGES, k
    return validate(config)


def inputs(seed: int = 0, mixed: bool = True):
    """(ids [4, 16] with padded rows, language ids): TLM-like rows whose second part is the other
    language (rows 0-1: 0 then 1, rows 2-3: 1 then 0), or all language 0."""
    ids = random_ids(np.random.default_rng(seed), 4, 16, V, lengths=[16, 12, 16, 9])
    languages = np.zeros_like(ids)
    if mixed:
        languages[:, 7:] = 1
        languages[2:] = 1 - languages[2:]
    return jnp.asarray(ids), jnp.asarray(languages)


def hidden_states(config, params, ids, languages):
    """Every layer's states [L + 1, B, S, H] (jitted once per model config)."""
    return jit_apply(config)({"params": params}, ids, language_ids=languages, output_hidden_states=True)[1]


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("k", [0, 1, 3])
def test_each_language_copy_adds_one_block_per_layer_and_the_shared_stack_keeps_the_rest(k):
    config = config_with(k)
    boxed = param_shapes(config, language_ids=jnp.zeros((1, 16), jnp.int32))
    encoder = nn.meta.unbox(boxed["encoder"])
    expected = {"embeddings": EMBEDDINGS}
    if k:
        expected["language_layers"] = k * LANGUAGES * BLOCK
    if k < L:
        expected["layers"] = (L - k) * BLOCK
    assert {name: count(tree) for name, tree in encoder.items()} == expected
    assert count(nn.meta.unbox(boxed["lm_head"])) == H * H + H + 2 * H + VP
    assert flops_lib.body_params(config.model) == (L - k + k * LANGUAGES) * BLOCK
    # MFU counts the work a token needs: its own language's copy only, so the FLOPs do not grow with k.
    flops = flops_lib.forward_flops_per_token
    assert flops(config.model, 16) == flops(config_with(0).model, 16)
    if k:
        kernel = boxed["encoder"]["language_layers"]["layer"]["intermediate"]["kernel"]
        assert kernel.value.shape == (k, LANGUAGES, H, MLP)
        assert kernel.names == ("layers", "languages", "embed", "mlp")
        # fsdp splits `embed`; the language (and layer) axis stays whole on every device.
        assert tuple(nn.logical_to_mesh_axes(kernel.names, logical_axis_rules("fsdp"))) == (None, None, "fsdp", None)


def test_without_language_layers_the_encoder_is_the_plain_xlm_r_stack():
    config = config_with(0)
    _, params = random_params(config, seed=1, language_ids=jnp.zeros((1, 16), jnp.int32))
    assert set(params["encoder"]) == {"embeddings", "layers"}
    assert params["encoder"]["layers"]["layer"]["output"]["kernel"].shape == (L, MLP, H)
    ids, languages = inputs()
    _, expected = np_forward(params, ids, config.model, language_ids=np.asarray(languages))
    np.testing.assert_allclose(hidden_states(config, params, ids, languages), expected, atol=1e-5)


def copies_of(shared_params, k: int):
    """A k-language-layer model's params whose every copy is the shared model's layer."""
    encoder = dict(shared_params["encoder"])
    layers = encoder.pop("layers")
    encoder["language_layers"] = jax.tree.map(lambda x: jnp.stack([x[:k]] * LANGUAGES, axis=1), layers)
    if k < L:
        encoder["layers"] = jax.tree.map(lambda x: x[k:], layers)
    return {**shared_params, "encoder": encoder}


@pytest.mark.parametrize("k", [2, 3])
def test_copies_holding_the_shared_weights_give_the_shared_model(k):
    _, shared = random_params(config_with(0), seed=2, language_ids=jnp.zeros((1, 16), jnp.int32))
    params = copies_of(shared, k)
    shapes = nn.meta.unbox(param_shapes(config_with(k), language_ids=jnp.zeros((1, 16), jnp.int32)))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, shapes)
    ids, languages = inputs()
    states = hidden_states(config_with(k), params, ids, languages)
    assert states.shape == (L + 1, 4, 16, H)
    np.testing.assert_allclose(states, hidden_states(config_with(0), shared, ids, languages), atol=1e-6)


@pytest.fixture(scope="module")
def two_language_layers():
    config = config_with(2)
    return config, random_params(config, seed=3, language_ids=jnp.zeros((1, 16), jnp.int32))[1]


def reference_states(config, params, ids, languages):
    """[L + 1, B, S, H] by hand: at each of the bottom k layers every language's copy runs as a
    plain EncoderLayer and each token takes its own language's output; then the shared layers."""
    c, encoder = config.model, params["encoder"]
    mask = ids != PAD
    x = Embeddings(c).apply({"params": encoder["embeddings"]}, ids, language_ids=languages)
    states, layer = [x], EncoderLayer(c)
    for depth in range(c.num_layers):
        if depth < c.language_specific_layers:
            outputs = [layer.apply({"params": jax.tree.map(lambda w: w[depth, language],
                                                           encoder["language_layers"]["layer"])}, x, mask, True)
                       for language in range(LANGUAGES)]
            x = jnp.where(languages[..., None] == 0, outputs[0], outputs[1])
        else:
            shared = jax.tree.map(lambda w: w[depth - c.language_specific_layers], encoder["layers"]["layer"])
            x = layer.apply({"params": shared}, x, mask, True)
        states.append(x)
    return jnp.stack(states)


def test_every_token_goes_through_its_own_languages_copy_at_every_layer(two_language_layers):
    config, params = two_language_layers
    ids, languages = inputs(seed=4)
    expected = jax.jit(functools.partial(reference_states, config))(params, ids, languages)
    np.testing.assert_allclose(hidden_states(config, params, ids, languages), expected, atol=1e-5)


def test_language_0_text_never_sees_language_1s_copy(two_language_layers):
    config, params = two_language_layers
    ids, languages = inputs(seed=5, mixed=False)
    before = hidden_states(config, params, ids, languages)
    copies = params["encoder"]["language_layers"]
    other = jax.tree.map(lambda w: w.at[:, 1].add(0.5), copies)
    changed = {**params, "encoder": {**params["encoder"], "language_layers": other}}
    np.testing.assert_array_equal(hidden_states(config, changed, ids, languages), before)

    grads = jax.jit(jax.grad(lambda p: jnp.sum(hidden_states(config, p, ids, languages)[-1] ** 2)))(params)
    per_copy = jax.tree.leaves(grads["encoder"]["language_layers"])
    assert all(np.all(np.asarray(g[:, 1]) == 0) for g in per_copy)
    assert all(np.any(np.asarray(g[:, 0]) != 0) for g in per_copy)


@pytest.mark.parametrize("k, depth", [(2, 1), (2, 2), (1, 2)])
def test_truncated_model_is_the_full_model_up_to_that_depth(two_language_layers, k, depth):
    config = config_with(k)
    if k == 2:
        params = two_language_layers[1]
    else:
        params = random_params(config, seed=6, language_ids=jnp.zeros((1, 16), jnp.int32))[1]
    ids, languages = inputs(seed=7)
    module, kept = truncated(config.model, params, depth)
    kept_layers = {name: jax.tree.leaves(tree)[0].shape[0] for name, tree in kept["encoder"].items()
                   if name != "embeddings"}
    expected = {"language_layers": min(depth, k), "layers": depth - k}
    assert kept_layers == {name: n for name, n in expected.items() if n > 0}
    shorter = ml_collections.ConfigDict({"model": module.config})
    np.testing.assert_array_equal(hidden_states(shorter, kept, ids, languages),
                                  hidden_states(config, params, ids, languages)[:depth + 1])


@pytest.mark.parametrize("k, stacks", [(1, 2), (3, 1)])
def test_remat_policy_wraps_every_scanned_stack(k, stacks):
    """A remat'ed block shows as one checkpoint (remat2) per stack in the traced forward pass; that
    it keeps the gradients is tests/models/test_encoder.py's remat test."""
    config = config_with(k)
    config.model.remat = "full"
    _, params = random_params(config, seed=8, language_ids=jnp.zeros((1, 16), jnp.int32))
    ids, languages = inputs(seed=9)
    forward = functools.partial(MaskedLM(config.model).apply, language_ids=languages, method=MaskedLM.hidden_states)
    jaxpr = str(jax.make_jaxpr(lambda p: forward({"params": p}, ids))(params))
    assert len(re.findall(r"= (?:remat2|checkpoint)\[", jaxpr)) == stacks


@pytest.mark.parametrize("field, value, message", [
    ("language_specific_layers", 4, r"`model.language_specific_layers`: got 4; .* 0..3 \(model.num_layers\)"),
    ("language_specific_layers", -1, r"`model.language_specific_layers`: got -1"),
    ("num_languages", 0, r"`model.language_specific_layers`: got 1, but model.num_languages=0: .* "
                         r"set --config.model.num_languages"),
    ("init_from", "hf:/some/xlmr", r"`model.language_specific_layers`: got 1 with init_from='hf:/some/xlmr'"),
])
def test_bad_language_layer_settings_name_the_field(field, value, message):
    config = config_with(1)
    (config if field == "init_from" else config.model)[field] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_export_to_transformers_refuses_per_language_layers(tmp_path):
    config = config_with(1)
    _, params = random_params(config, language_ids=jnp.zeros((1, 16), jnp.int32))
    with pytest.raises(ConfigError, match="`model.language_specific_layers`: got 1, but transformers"):
        export_hf(config.model, params, types.SimpleNamespace(vocab_size=V), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


# --- through the train loop ---------------------------------------------------------------

def run_config(corpus_dir, rules: str):
    """configs/demo.py, tiny, en + sw with a language-specific bottom layer over the 8 devices:
    4 steps, checkpoints at 2 and 4, no evals. `fsdp` shards the params (not their language
    axis); `dp` replicates them."""
    config = sibling_config(str(REPO_ROOT / "configs" / "demo.py"), "demo")
    m, d, t = config.model, config.data, config.train
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim, m.vocab_size, m.max_len = 2, 32, 2, 64, 450, 64
    m.num_languages, m.language_specific_layers = 2, 1
    d.corpus_dir, d.seq_len, d.tokenizer_sentences = str(corpus_dir), 32, 1000
    d.eval_sentences_per_language, d.eval_batches = 20, 1
    t.batch_size, t.num_steps, t.warmup_steps, t.log_every = 8, 4, 1, 1
    config.checkpoint.every_steps = 2
    config.evals = ml_collections.ConfigDict()
    config.mesh.data, config.mesh.fsdp, config.mesh.rules = (1, -1, "fsdp") if rules == "fsdp" else (-1, 1, "dp")
    return config


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=8 (repo-root conftest)")
def test_a_sharded_run_with_language_layers_resumes_replicated_and_loads(shared_data, tmp_path):
    """Trained with fsdp, resumed from step 2 with replicated params: steps 3-4 agree to float32
    summation order, so the sharded step computes the unsharded one. Exact resume on one layout
    is tests/train/test_loop.py's, for any params tree."""
    import xlm_jax
    from xlm_jax.modes.train import train_and_evaluate

    (tmp_path / "corpus").mkdir()
    corpus = write_corpus(tmp_path / "corpus", shared_data, ("en", "sw"), 200)
    sharded = tmp_path / "sharded"
    rows = {row["step"]: row for row in train_and_evaluate(run_config(corpus, "fsdp"), str(sharded))}
    assert sorted(rows) == [1, 2, 3, 4] and all(np.isfinite(row["loss"]) for row in rows.values())

    replicated = tmp_path / "replicated"
    shutil.copytree(sharded, replicated)
    shutil.rmtree(replicated / "checkpoints" / "4")
    again = {row["step"]: row for row in train_and_evaluate(run_config(corpus, "dp"), str(replicated))}
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        assert again[step]["loss"] == pytest.approx(rows[step]["loss"], rel=1e-5, abs=1e-5)

    model = xlm_jax.load(str(sharded))
    assert model.step == 4
    assert model.params["encoder"]["language_layers"]["layer"]["output"]["kernel"].shape == (1, 2, 64, 32)
    english = model.encode(["Hello world"], language="en")
    swahili = model.encode(["Hello world"], language="sw")
    assert english.shape == (1, 32) and np.isfinite(english).all() and not np.allclose(english, swahili)
