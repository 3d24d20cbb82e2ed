"""XLM-R weights from transformers give the same logits and hidden states in xlm_jax.

Random-initialized transformers models built from a config (no download), saved to a
local directory, imported; every tensor randomized so LayerNorms and biases count.
"""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax.errors import CheckpointError
from xlm_jax.interop.hf import import_xlmr
from xlm_jax.models.heads import MaskedLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = [  # layers, hidden, heads, ffn, vocab
    (3, 96, 6, 192, 120),
    (2, 64, 4, 160, 250),
]


def save_random_xlmr(directory, layers, hidden, heads, ffn, vocab, max_positions=42, head=True):
    config = transformers.XLMRobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=max_positions)
    torch.manual_seed(layers * 1000 + hidden)
    cls = transformers.XLMRobertaForMaskedLM if head else transformers.XLMRobertaModel
    model = cls(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def batch_with_padding(vocab, rng):
    ids = rng.integers(4, vocab - 1, (3, 17)).astype(np.int64)
    ids[:, 0] = 0
    ids[1, 12:] = 1          # padding
    ids[2, 5:] = 1
    return ids


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_logits_and_every_hidden_state_match_transformers(tmp_path, size):
    reference = save_random_xlmr(tmp_path, *size)
    model_config, params, has_head = import_xlmr(str(tmp_path))
    assert has_head
    ids = batch_with_padding(size[-1], np.random.default_rng(0))
    mask = ids != 1
    with torch.no_grad():
        out = reference(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                        output_hidden_states=True)
    logits, hidden = MaskedLM(model_config).apply(
        {"params": params}, jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask),
        output_hidden_states=True)
    assert hidden.shape[0] == len(out.hidden_states) == size[0] + 1
    for i, expected in enumerate(out.hidden_states):
        np.testing.assert_allclose(np.asarray(hidden[i])[mask], expected.numpy()[mask], atol=1e-4,
                                   err_msg=f"hidden state {i}")
    np.testing.assert_allclose(np.asarray(logits)[mask], out.logits.numpy()[mask], atol=1e-4)


def test_encoder_only_checkpoint_imports_without_head(tmp_path):
    reference = save_random_xlmr(tmp_path, 2, 64, 4, 128, 100, head=False)
    model_config, params, has_head = import_xlmr(str(tmp_path))
    assert not has_head and "lm_head" not in params
    ids = batch_with_padding(100, np.random.default_rng(1))
    with torch.no_grad():
        expected = reference(torch.tensor(ids), attention_mask=torch.tensor((ids != 1).astype(np.int64)))
    hidden, _ = MaskedLM(model_config).apply(
        {"params": params}, jnp.asarray(ids, jnp.int32), method=lambda m, x: m.encoder(x))
    mask = ids != 1
    np.testing.assert_allclose(np.asarray(hidden)[mask], expected.last_hidden_state.numpy()[mask],
                               atol=1e-4)


def test_missing_directory_files_and_tensors_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        import_xlmr(str(tmp_path))
    save_random_xlmr(tmp_path, 2, 64, 4, 128, 100)
    from safetensors.numpy import load_file, save_file
    weights = load_file(str(tmp_path / "model.safetensors"))
    broken = {k: v for k, v in weights.items() if k != "roberta.encoder.layer.1.intermediate.dense.weight"}
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"roberta\.encoder\.layer\.1\.intermediate\.dense\.weight.*missing"):
        import_xlmr(str(tmp_path))
    weights["roberta.encoder.layer.0.output.dense.weight"] = np.zeros((64, 7), np.float32)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layer\.0\.output\.dense\.weight.*shape \(64, 7\)"):
        import_xlmr(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        import_xlmr(str(tmp_path))


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not supported"):
        import_xlmr(str(tmp_path))
