"""model.language_specific_positions: a position table per language (Dufter & Schuetze 2020, "lang-pos").

Checked against counted parameters, a numpy forward pass that reads each language's block of
position rows, the default (one table, bit-identical outputs), config errors and the
transformers export, which has one position table and must refuse.
"""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import jit_apply, np_forward, param_shapes, random_ids, random_params, tiny_config
from xlm_jax.modes.prepare import validate
from xlm_jax.errors import ConfigError
from xlm_jax.interop.hf import export_hf

H, V, MAX_LEN, LANGUAGES = 32, 100, 32, 2
ROWS = MAX_LEN + 2   # one table: max_len + position_offset rows


def config_with(positions: bool, num_languages: int = LANGUAGES):
    config = tiny_config(num_layers=2, hidden_size=H, num_heads=2, mlp_dim=64, vocab_size=V, max_len=MAX_LEN,
                         seq_len=16, batch_size=4)
    config.model.num_languages, config.model.language_specific_positions = num_languages, positions
    return validate(config)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def inputs():
    ids = random_ids(np.random.default_rng(3), 4, 16, V, lengths=[16, 12, 16, 9])
    languages = np.zeros_like(ids)
    languages[1::2] = 1   # rows 1 and 3 are the second language
    return jnp.asarray(ids), jnp.asarray(languages)


def test_each_language_gets_a_table_of_position_rows():
    shapes = {positions: nn.meta.unbox(param_shapes(config_with(positions), language_ids=jnp.zeros((1, 16), jnp.int32)))
              for positions in (False, True)}
    tables = {p: s["encoder"]["embeddings"]["position_embeddings"]["embedding"].shape for p, s in shapes.items()}
    assert tables == {False: (ROWS, H), True: (LANGUAGES * ROWS, H)}
    assert count(shapes[True]) - count(shapes[False]) == (LANGUAGES - 1) * ROWS * H


def test_a_language_reads_its_own_block_of_rows():
    """The numpy reference with language i's rows as its position table gives the model's outputs,
    and the same text in the two languages gets different states."""
    config = config_with(True)
    _, params = random_params(config, seed=5, language_ids=jnp.zeros((1, 16), jnp.int32))
    ids, languages = inputs()
    logits, hidden = jit_apply(config)({"params": params}, ids, language_ids=languages, output_hidden_states=True)
    table = np.asarray(params["encoder"]["embeddings"]["position_embeddings"]["embedding"])
    for language in range(LANGUAGES):
        rows = np.asarray(languages[:, 0]) == language
        own = jax_tree_with_positions(params, table[language * ROWS:(language + 1) * ROWS])
        expected_logits, expected_hidden = np_forward(own, ids[rows], config.model, language_ids=languages[rows])
        np.testing.assert_allclose(np.asarray(hidden)[:, rows], expected_hidden, atol=2e-5)
        np.testing.assert_allclose(np.asarray(logits)[rows][..., :V], expected_logits, atol=2e-4)
    same_text = jnp.concatenate([ids[:1], ids[:1]])
    _, states = jit_apply(config)({"params": params}, same_text, language_ids=jnp.asarray([[0] * 16, [1] * 16]),
                                  output_hidden_states=True)
    assert not np.allclose(states[0, 0], states[0, 1])


def jax_tree_with_positions(params, table):
    """params with the position table replaced (a shallow copy down to it)."""
    embeddings = {**params["encoder"]["embeddings"], "position_embeddings": {"embedding": table}}
    return {**params, "encoder": {**params["encoder"], "embeddings": embeddings}}


def test_default_is_one_shared_table_and_unchanged_outputs():
    """language_specific_positions=False: the language ids change only the language embedding."""
    config = config_with(False)
    _, params = random_params(config, seed=6, language_ids=jnp.zeros((1, 16), jnp.int32))
    ids, languages = inputs()
    logits, hidden = jit_apply(config)({"params": params}, ids, language_ids=languages, output_hidden_states=True)
    expected_logits, expected_hidden = np_forward(params, ids, config.model, language_ids=languages)
    np.testing.assert_allclose(np.asarray(hidden), expected_hidden, atol=2e-5)
    np.testing.assert_allclose(np.asarray(logits)[..., :V], expected_logits, atol=2e-4)


def test_bad_settings_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"`model.language_specific_positions`: got True, but "
                                          r"model.num_languages=0: .*set --config.model.num_languages"):
        config_with(True, num_languages=0)
    config = config_with(True)
    config.init_from = "hf:/some/xlmr"
    with pytest.raises(ConfigError, match=r"`model.language_specific_positions`: got True with "
                                          r"init_from='hf:/some/xlmr'"):
        validate(config)
    config.init_from = ""
    _, params = random_params(config, language_ids=jnp.zeros((1, 16), jnp.int32))
    with pytest.raises(ConfigError, match=r"`model.language_specific_positions`: got True, but transformers"):
        export_hf(config.model, params, types.SimpleNamespace(vocab_size=V), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
