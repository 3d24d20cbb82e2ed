"""validate(): the default config passes, and every bad field fails naming that field."""
import importlib.util
import pathlib
import re

import pytest

from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.errors import ConfigError, XlmJaxError


def _with(**fields):
    """default_config() with dotted overrides: _with(**{"model.dtype": "bf16"})."""
    config = default_config()
    for dotted, value in fields.items():
        section, name = dotted.split(".")
        config[section][name] = value
    return config


def _assert_names(config, field):
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert f"`{field}`" in str(info.value), str(info.value)
    return str(info.value)


def test_default_config_validates_and_is_returned():
    config = default_config()
    assert validate(config) is config


def test_recipes_validate():
    recipes = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
    assert recipes
    for path in recipes:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        validate(module.get_config())


def test_config_error_is_an_xlm_jax_error():
    assert issubclass(ConfigError, XlmJaxError)


@pytest.mark.parametrize("field, value, allowed", [
    ("model.dtype", "bf16", "bfloat16"),
    ("model.remat", "minimal", "dots_saveable"),
    ("train.schedule", "cosine", "polynomial"),
    ("mesh.rules", "tp", "fsdp_tp"),
    ("data.packing", "documents", "lines"),
])
def test_enumerated_fields_list_allowed_values(field, value, allowed):
    message = _assert_names(_with(**{field: value}), field)
    assert repr(value) in message and allowed in message


@pytest.mark.parametrize("field", [
    "model.num_layers", "model.hidden_size", "model.num_heads", "model.mlp_dim", "model.vocab_size",
    "model.max_len", "model.type_vocab_size", "data.seq_len", "train.num_steps", "train.batch_size",
    "train.grad_accum_steps", "train.log_every", "checkpoint.every_steps",
    "checkpoint.keep", "data.tokenizer_sentences", "data.min_languages", "data.eval_batches",
    "model.vocab_pad_multiple", "train.max_consecutive_skips",
])
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_must_be_positive(field, value):
    _assert_names(_with(**{field: value}), field)


@pytest.mark.parametrize("field", [
    "train.learning_rate", "train.warmup_steps", "train.weight_decay", "train.clip_norm",
    "model.num_languages", "data.max_sentences_per_language", "data.eval_sentences_per_language",
    "model.dropout_rate", "model.attention_dropout_rate", "data.alpha",
])
def test_non_negative_fields(field):
    _assert_names(_with(**{field: -1}), field)
    validate(_with(**{field: 0}))   # zero is allowed for these


def test_none_in_a_numeric_field_is_a_config_error():
    """ConfigDict accepts None for any field (e.g. --config.model.num_layers=None)."""
    _assert_names(_with(**{"model.num_layers": None}), "model.num_layers")


def test_hidden_size_must_divide_by_heads():
    message = _assert_names(_with(**{"model.hidden_size": 100, "model.num_heads": 3}), "model.num_heads")
    assert "100" in message and "3" in message
    validate(_with(**{"model.hidden_size": 96, "model.num_heads": 3}))


def test_vocab_needs_room_for_specials():
    _assert_names(_with(**{"model.vocab_size": 5}), "model.vocab_size")


def test_seq_len_cannot_exceed_max_len():
    _assert_names(_with(**{"data.seq_len": 513, "model.max_len": 512}), "data.seq_len")
    validate(_with(**{"data.seq_len": 512, "model.max_len": 512}))


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5])
def test_mask_prob_in_open_unit_interval(value):
    _assert_names(_with(**{"data.mask_prob": value}), "data.mask_prob")


@pytest.mark.parametrize("mask_token_prob, random_token_prob, field", [
    (0.8, 0.3, "data.random_token_prob"),
    (-0.1, 0.1, "data.mask_token_prob"),
    (0.8, -0.1, "data.random_token_prob"),
])
def test_replacement_probabilities(mask_token_prob, random_token_prob, field):
    config = _with(**{"data.mask_token_prob": mask_token_prob, "data.random_token_prob": random_token_prob})
    with pytest.raises(ConfigError) as info:
        validate(config)
    # The message may name the pair; it must at least mention the field that is wrong.
    assert field.split(".")[1] in str(info.value), str(info.value)


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_character_coverage(value):
    _assert_names(_with(**{"data.character_coverage": value}), "data.character_coverage")


@pytest.mark.parametrize("field", ["train.b1", "train.b2"])
@pytest.mark.parametrize("value", [1.0, -0.1])
def test_adam_betas_name_the_bad_beta(field, value):
    _assert_names(_with(**{field: value}), field)


def test_batch_must_divide_by_grad_accum():
    message = _assert_names(_with(**{"train.batch_size": 32, "train.grad_accum_steps": 3}),
                            "train.grad_accum_steps")
    assert "32" in message
    validate(_with(**{"train.batch_size": 32, "train.grad_accum_steps": 4}))


def test_warmup_cannot_exceed_num_steps():
    _assert_names(_with(**{"train.warmup_steps": 1001, "train.num_steps": 1000}), "train.warmup_steps")
    validate(_with(**{"train.warmup_steps": 1000, "train.num_steps": 1000}))


@pytest.mark.parametrize("axis", ["data", "fsdp", "tensor"])
@pytest.mark.parametrize("value", [0, -2])
def test_mesh_axis_values(axis, value):
    _assert_names(_with(**{f"mesh.{axis}": value}), f"mesh.{axis}")


def test_mesh_at_most_one_minus_one():
    _assert_names(_with(**{"mesh.data": -1, "mesh.fsdp": -1}), "mesh")
    validate(_with(**{"mesh.data": 2, "mesh.fsdp": -1, "mesh.tensor": 2}))


def test_missing_field_is_named():
    config = default_config()
    del config.train["warmup_steps"]
    message = _assert_names(config, "train.warmup_steps")
    assert re.search("missing", message)


def test_missing_section_is_named():
    config = default_config()
    del config["mesh"]
    message = _assert_names(config, "mesh")
    assert "missing" in message and "default_config" in message
