"""Import transformers' XLM-R checkpoints (XLM-R, InfoXLM, XLM-Align) into xlm_jax params.

Reads only the directory given: config.json plus model.safetensors (numpy, no torch)
or pytorch_model.bin (needs torch). PyTorch Linear weights are [out, in]; ours are
[in, out] with the attention heads kept as separate axes, and per-layer weights are
stacked on a leading `layers` axis (the encoder runs under nn.scan).
"""
import json
import os

import numpy as np

from xlm_jax.config import default_config
from xlm_jax.errors import CheckpointError

XLMR_TYPES = ("xlm-roberta", "roberta")


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: a transformers model directory needs config.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_config_from_hf(hf: dict, path: str = "config.json"):
    """The xlm_jax `model` config section equivalent to a transformers XLM-R config."""
    model_type = hf.get("model_type")
    if model_type not in XLMR_TYPES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not supported; "
                              f"supported: {', '.join(XLMR_TYPES)}")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {hf['hidden_act']!r}; xlm_jax implements 'gelu' (erf)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type {hf['position_embedding_type']!r}; "
                              "xlm_jax implements 'absolute'")
    m = default_config().model
    pad = hf.get("pad_token_id", 1)
    m.num_layers = hf["num_hidden_layers"]
    m.hidden_size = hf["hidden_size"]
    m.num_heads = hf["num_attention_heads"]
    m.mlp_dim = hf["intermediate_size"]
    m.vocab_size = hf["vocab_size"]
    m.type_vocab_size = hf.get("type_vocab_size", 1)
    m.pad_token_id = pad
    m.position_offset = pad + 1
    m.max_len = hf["max_position_embeddings"] - m.position_offset
    m.layer_norm_eps = hf.get("layer_norm_eps", 1e-5)
    m.dropout_rate = hf.get("hidden_dropout_prob", 0.1)
    m.attention_dropout_rate = hf.get("attention_probs_dropout_prob", 0.1)
    m.initializer_range = hf.get("initializer_range", 0.02)
    return m


def read_hf_weights(directory: str) -> dict[str, np.ndarray]:
    """name -> float32 array, from model.safetensors or pytorch_model.bin."""
    safetensors_path = os.path.join(directory, "model.safetensors")
    torch_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        from safetensors.numpy import load_file
        weights = load_file(safetensors_path)
    elif os.path.isfile(torch_path):
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{torch_path} needs torch to read; install torch or convert it to "
                                  "model.safetensors") from None
        weights = {k: v.float().numpy() for k, v in
                   torch.load(torch_path, map_location="cpu", weights_only=True).items()}
    else:
        raise CheckpointError(f"{directory} has neither model.safetensors nor pytorch_model.bin")
    return {k: np.asarray(v, np.float32) for k, v in weights.items()}


class _Weights:
    """Named lookups into a state dict that fail with the tensor's name and the file."""

    def __init__(self, weights: dict, directory: str):
        self.weights, self.directory, self.used = weights, directory, set()
        prefixes = ("roberta.", "")
        self.prefix = next((p for p in prefixes if f"{p}embeddings.word_embeddings.weight" in weights),
                           None)
        if self.prefix is None:
            raise CheckpointError(f"{directory}: no tensor 'roberta.embeddings.word_embeddings.weight' "
                                  "(is this an XLM-R checkpoint?)")

    def __call__(self, name: str, shape: tuple, body: bool = True) -> np.ndarray:
        key = (self.prefix if body else "") + name
        if key not in self.weights:
            raise CheckpointError(f"{self.directory}: tensor {key!r} is missing")
        value = self.weights[key]
        if value.shape != tuple(shape):
            raise CheckpointError(f"{self.directory}: tensor {key!r} has shape {value.shape}, "
                                  f"config.json implies {tuple(shape)}")
        self.used.add(key)
        return value


def params_from_hf(weights: dict, m, directory: str = "") -> tuple[dict, bool]:
    """(xlm_jax params, whether the checkpoint had an MLM head)."""
    get = _Weights(weights, directory)
    h, f, v, heads = m.hidden_size, m.mlp_dim, m.vocab_size, m.num_heads
    d = h // heads

    def layer_norm(name, body=True):
        return {"scale": get(f"{name}.weight", (h,), body), "bias": get(f"{name}.bias", (h,), body)}

    def stacked(fn):
        per_layer = [fn(f"encoder.layer.{i}.") for i in range(m.num_layers)]
        return {k: np.stack([p[k] for p in per_layer]) for k in per_layer[0]}

    def layer(prefix):
        out = {}
        for name in ("query", "key", "value"):
            w = get(f"{prefix}attention.self.{name}.weight", (h, h))
            out[f"{name}/kernel"] = w.T.reshape(h, heads, d)
            out[f"{name}/bias"] = get(f"{prefix}attention.self.{name}.bias", (h,)).reshape(heads, d)
        out["output/kernel"] = get(f"{prefix}attention.output.dense.weight", (h, h)).T.reshape(heads, d, h)
        out["output/bias"] = get(f"{prefix}attention.output.dense.bias", (h,))
        for ours, theirs in (("attention_LayerNorm", "attention.output.LayerNorm"),
                             ("output_LayerNorm", "output.LayerNorm")):
            ln = layer_norm(prefix + theirs)
            out[f"{ours}/scale"], out[f"{ours}/bias"] = ln["scale"], ln["bias"]
        out["intermediate/kernel"] = get(f"{prefix}intermediate.dense.weight", (f, h)).T
        out["intermediate/bias"] = get(f"{prefix}intermediate.dense.bias", (f,))
        out["ffn_output/kernel"] = get(f"{prefix}output.dense.weight", (h, f)).T
        out["ffn_output/bias"] = get(f"{prefix}output.dense.bias", (h,))
        return out

    flat = stacked(layer)
    layer_params = {
        "attention": {name: {"kernel": flat[f"{name}/kernel"], "bias": flat[f"{name}/bias"]}
                      for name in ("query", "key", "value", "output")},
        "attention_LayerNorm": {"scale": flat["attention_LayerNorm/scale"],
                                "bias": flat["attention_LayerNorm/bias"]},
        "intermediate": {"kernel": flat["intermediate/kernel"], "bias": flat["intermediate/bias"]},
        "output": {"kernel": flat["ffn_output/kernel"], "bias": flat["ffn_output/bias"]},
        "output_LayerNorm": {"scale": flat["output_LayerNorm/scale"], "bias": flat["output_LayerNorm/bias"]},
    }
    embeddings = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight", (v, h))},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight",
                                                 (m.max_len + m.position_offset, h))},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight",
                                                   (m.type_vocab_size, h))},
        "LayerNorm": layer_norm("embeddings.LayerNorm"),
    }
    params = {"encoder": {"embeddings": embeddings, "layers": {"layer": layer_params}}}
    has_head = "lm_head.dense.weight" in weights
    if has_head:
        params["lm_head"] = {
            "dense": {"kernel": get("lm_head.dense.weight", (h, h), body=False).T,
                      "bias": get("lm_head.dense.bias", (h,), body=False)},
            "LayerNorm": layer_norm("lm_head.layer_norm", body=False),
            "bias": get("lm_head.bias", (v,), body=False),
        }
    return params, has_head


def import_xlmr(directory: str):
    """(xlm_jax model config, params, has_mlm_head) from a transformers XLM-R directory."""
    m = model_config_from_hf(read_hf_config(directory), os.path.join(directory, "config.json"))
    params, has_head = params_from_hf(read_hf_weights(directory), m, directory)
    return m, params, has_head


ARCHITECTURE_FIELDS = ("num_layers", "hidden_size", "num_heads", "mlp_dim", "vocab_size", "max_len",
                       "type_vocab_size", "pad_token_id", "position_offset", "layer_norm_eps")
SENTENCEPIECE_FILE = "sentencepiece.bpe.model"


def adopt_hf_model(config, directory: str, workdir: str) -> None:
    """For `init_from=hf:DIR`: sets the model's architecture fields from DIR's config.json
    (dtype, remat and dropout stay the run's) and puts DIR's SentencePiece model in the
    workdir as the run's tokenizer. Reads no weights: a resumed run does not need them."""
    from xlm_jax.data.pipeline import TOKENIZER_FILE
    from xlm_jax.data.tokenizers import SentencePieceTokenizer

    imported = model_config_from_hf(read_hf_config(directory), os.path.join(directory, "config.json"))
    for field in ARCHITECTURE_FIELDS:
        config.model[field] = imported[field]
    tokenizer_path = os.path.join(workdir, TOKENIZER_FILE)
    if not os.path.exists(tokenizer_path):
        source = os.path.join(directory, SENTENCEPIECE_FILE)
        if not os.path.isfile(source):
            raise CheckpointError(f"{source} not found: init_from needs the model's SentencePiece "
                                  "tokenizer beside its weights")
        tokenizer = SentencePieceTokenizer.load(source)
        if tokenizer.vocab_size != imported.vocab_size:
            raise CheckpointError(f"{source} gives {tokenizer.vocab_size} ids but config.json has "
                                  f"vocab_size {imported.vocab_size}")
        tokenizer.save(tokenizer_path)
