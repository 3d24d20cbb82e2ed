"""transformers XLM-R and BERT weights give the same logits, hidden states and pooler output.

Random-initialized transformers models built from a config (no download), saved to a
local directory, imported; every tensor randomized so LayerNorms and biases count.
"""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax.errors import CheckpointError
from xlm_jax.interop.hf import import_hf
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.models.vocab_padding import padded_vocab_size

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = [  # layers, hidden, heads, ffn, vocab
    (3, 96, 6, 192, 120),
    (2, 64, 4, 160, 250),
]
CLASSES = {  # family -> (config class, {kind: model class})
    "xlmr": ("XLMRobertaConfig", {"masked_lm": "XLMRobertaForMaskedLM", "base": "XLMRobertaModel"}),
    "bert": ("BertConfig", {"masked_lm": "BertForMaskedLM", "base": "BertModel",
                            "pretraining": "BertForPreTraining"}),
}
PAD = {"xlmr": 1, "bert": 0}


def save_random_hf(directory, family, layers, hidden, heads, ffn, vocab, max_positions=42,
                   kind="masked_lm"):
    """A transformers model with every tensor drawn from N(0, 0.2), saved as safetensors."""
    config_class, model_classes = CLASSES[family]
    config = getattr(transformers, config_class)(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=max_positions)
    torch.manual_seed(layers * 1000 + hidden)
    model = getattr(transformers, model_classes[kind])(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def save_random_xlmr(directory, layers, hidden, heads, ffn, vocab, max_positions=42, head=True):
    return save_random_hf(directory, "xlmr", layers, hidden, heads, ffn, vocab, max_positions,
                          "masked_lm" if head else "base")


def batch_with_padding(vocab, rng, family="xlmr"):
    """ids [3, 17] starting with <s>/[CLS], two rows padded; token types 0/1 for BERT."""
    ids = rng.integers(4, vocab - 1, (3, 17)).astype(np.int64)
    ids[:, 0] = 0 if family == "xlmr" else 2
    ids[1, 12:] = PAD[family]
    ids[2, 5:] = PAD[family]
    types = np.zeros_like(ids) if family == "xlmr" else (np.arange(17) >= 8).astype(np.int64)[None].repeat(3, 0)
    return ids, types, ids != PAD[family]


def reference_outputs(reference, ids, types, mask):
    with torch.no_grad():
        return reference(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                         token_type_ids=torch.tensor(types), output_hidden_states=True)


@pytest.mark.parametrize("family", ["xlmr", "bert"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_logits_and_every_hidden_state_match_transformers(tmp_path, family, size):
    reference = save_random_hf(tmp_path, family, *size)
    imported = import_hf(str(tmp_path))
    assert imported.has_head and not imported.model.pooler
    ids, types, mask = batch_with_padding(size[-1], np.random.default_rng(0), family)
    out = reference_outputs(reference, ids, types, mask)
    logits, hidden = MaskedLM(imported.model).apply(
        {"params": imported.params}, jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask),
        token_type_ids=jnp.asarray(types, jnp.int32), output_hidden_states=True)
    assert hidden.shape[0] == len(out.hidden_states) == size[0] + 1
    for i, expected in enumerate(out.hidden_states):
        np.testing.assert_allclose(np.asarray(hidden[i])[mask], expected.numpy()[mask], atol=1e-4,
                                   err_msg=f"hidden state {i}")
    vocab = imported.model.vocab_size
    p = imported.params   # in the model layout: vocabulary rows zero-padded
    for table in (p["encoder"]["embeddings"]["word_embeddings"]["embedding"], p["lm_head"]["bias"]):
        assert len(table) == padded_vocab_size(imported.model) > vocab and not table[vocab:].any()
    np.testing.assert_allclose(np.asarray(logits)[..., :vocab][mask], out.logits.numpy()[mask], atol=1e-4)


def test_bert_config_maps_to_positions_from_zero_and_two_token_types(tmp_path):
    save_random_hf(tmp_path, "bert", 2, 64, 4, 128, 100)
    m = import_hf(str(tmp_path)).model
    assert (m.position_offset, m.pad_token_id, m.type_vocab_size, m.max_len) == (0, 0, 2, 42)
    assert m.layer_norm_eps == 1e-12


@pytest.mark.parametrize("family", ["xlmr", "bert"])
def test_encoder_only_checkpoint_imports_with_its_pooler_and_no_head(tmp_path, family):
    reference = save_random_hf(tmp_path, family, 2, 64, 4, 128, 100, kind="base")
    imported = import_hf(str(tmp_path))
    assert not imported.has_head and "lm_head" not in imported.params
    assert imported.model.pooler and "pooler" in imported.params
    ids, types, mask = batch_with_padding(100, np.random.default_rng(1), family)
    expected = reference_outputs(reference, ids, types, mask)
    model = MaskedLM(imported.model)
    variables = {"params": imported.params}
    hidden, _ = model.apply(variables, jnp.asarray(ids, jnp.int32), method=lambda m, x: m.encoder(
        x, jnp.asarray(mask), jnp.asarray(types, jnp.int32)))
    np.testing.assert_allclose(np.asarray(hidden)[mask], expected.last_hidden_state.numpy()[mask],
                               atol=1e-4)
    pooled = model.apply(variables, jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask),
                         token_type_ids=jnp.asarray(types, jnp.int32), method=MaskedLM.pooled)
    np.testing.assert_allclose(np.asarray(pooled), expected.pooler_output.numpy(), atol=1e-4)


def test_bert_pretraining_checkpoint_drops_only_the_next_sentence_head(tmp_path):
    """mBERT ships as BertForPreTraining: MLM head and pooler come in, the NSP head is named as left out."""
    reference = save_random_hf(tmp_path, "bert", 2, 64, 4, 128, 100, kind="pretraining")
    imported = import_hf(str(tmp_path))
    assert imported.has_head and imported.model.pooler
    assert imported.dropped == ["cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    ids, types, mask = batch_with_padding(100, np.random.default_rng(2), "bert")
    expected = reference_outputs(reference, ids, types, mask)
    logits = MaskedLM(imported.model).apply(
        {"params": imported.params}, jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask),
        token_type_ids=jnp.asarray(types, jnp.int32))
    np.testing.assert_allclose(np.asarray(logits)[..., :100][mask], expected.prediction_logits.numpy()[mask],
                               atol=1e-4)


def test_pytorch_bin_checkpoint_imports_like_safetensors(tmp_path):
    save_random_hf(tmp_path / "st", "xlmr", 2, 64, 4, 128, 100)
    reference = save_random_hf(tmp_path / "bin", "xlmr", 2, 64, 4, 128, 100)
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(reference.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    a, b = import_hf(str(tmp_path / "st")), import_hf(str(tmp_path / "bin"))
    import jax
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)


def test_missing_directory_files_and_tensors_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        import_hf(str(tmp_path))
    save_random_xlmr(tmp_path, 2, 64, 4, 128, 100)
    from safetensors.numpy import load_file, save_file
    weights = load_file(str(tmp_path / "model.safetensors"))
    broken = {k: v for k, v in weights.items() if k != "roberta.encoder.layer.1.intermediate.dense.weight"}
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"roberta\.encoder\.layer\.1\.intermediate\.dense\.weight.*missing"):
        import_hf(str(tmp_path))
    reshaped = dict(weights, **{"roberta.encoder.layer.0.output.dense.weight": np.zeros((64, 7), np.float32)})
    save_file(reshaped, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layer\.0\.output\.dense\.weight.*shape \(64, 7\)"):
        import_hf(str(tmp_path))
    save_file(dict(weights, **{"roberta.encoder.layer.0.adapter.weight": np.zeros(3, np.float32)}),
              str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"no place for: roberta\.encoder\.layer\.0\.adapter\.weight"):
        import_hf(str(tmp_path))
    untied = dict(weights, **{"lm_head.decoder.weight": np.ones((100, 64), np.float32)})
    save_file(untied, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"lm_head\.decoder\.weight.*tied"):
        import_hf(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        import_hf(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
])
def test_unsupported_architecture_is_named(tmp_path, change, message):
    save_random_xlmr(tmp_path, 1, 32, 2, 64, 50)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        import_hf(str(tmp_path))
