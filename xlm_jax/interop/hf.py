"""transformers interop: XLM-R family (XLM-R, InfoXLM, XLM-Align) and BERT / mBERT weights.

Both families run through the one xlm_jax encoder; they differ only in config
(positions after the pad id vs from 0, token types, LayerNorm eps, pooler) and in
tensor names. Import reads only the directory given: config.json plus model.safetensors
(numpy, no torch) or pytorch_model.bin (needs torch). Export writes what
`XLMRobertaForMaskedLM` / `BertForMaskedLM` `.from_pretrained` expect.

PyTorch Linear weights are [out, in]; ours are [in, out] with the attention heads kept
as separate axes, and per-layer weights are stacked on a leading `layers` axis (the
encoder runs under nn.scan). Every conversion is a transpose or reshape, so a round
trip is bit-exact.

Why one file: import and export are the two directions of one name and layout mapping
between transformers and xlm_jax; kept together, they change together.
"""
import dataclasses
import json
import os
import pickle
import shutil
import tempfile
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax.config import default_config
from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.extras import require
from xlm_jax.jsonfiles import read_json_object
from xlm_jax.models.vocab_padding import padded_vocab_size, resize_vocab_rows


@dataclasses.dataclass(frozen=True)
class Family:
    """How one transformers architecture names the tensors our single encoder needs."""
    model_types: tuple[str, ...]
    export_type: str
    body: str               # prefix of the encoder's tensors in a *ForMaskedLM checkpoint
    masked_lm: str          # the transformers class export targets
    head_dense: str
    head_layer_norm: str
    head_bias: str
    decoder: str            # tied copies of the word embeddings and head bias; never stored
    dropped: tuple[str, ...] = ()  # heads xlm_jax does not train, left out on import


XLM_R = Family(model_types=("xlm-roberta", "roberta"), export_type="xlm-roberta", body="roberta.",
               masked_lm="XLMRobertaForMaskedLM", head_dense="lm_head.dense",
               head_layer_norm="lm_head.layer_norm", head_bias="lm_head.bias",
               decoder="lm_head.decoder")
BERT = Family(model_types=("bert",), export_type="bert", body="bert.", masked_lm="BertForMaskedLM",
              head_dense="cls.predictions.transform.dense",
              head_layer_norm="cls.predictions.transform.LayerNorm", head_bias="cls.predictions.bias",
              decoder="cls.predictions.decoder", dropped=("cls.seq_relationship.",))
FAMILIES = (XLM_R, BERT)


def family_of_model_type(model_type, path: str = "config.json") -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise CheckpointError(f"{path}: model_type {model_type!r} is not supported; supported: {supported}")


def family_of_config(m) -> Family:
    """BERT counts positions from 0; the XLM-R family after the pad id."""
    return BERT if m.position_offset == 0 else XLM_R


# --- reading a transformers directory ---------------------------------------------------

def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: a transformers model directory needs config.json")
    return read_json_object(path, "a transformers model directory needs the config.json that "
                            "save_pretrained writes; copy it again from the model's source", CheckpointError)


def _weights_file(directory: str) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(path := os.path.join(directory, name)):
            return path
    raise CheckpointError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def _torch_state_dict(path: str) -> dict:
    torch = require("torch", f"reading {path} (or convert it to model.safetensors)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"{path}: refused to unpickle it: it holds objects other than tensors, which a pickle would "
            f"run as code, and nothing of it was executed (torch.load with weights_only=True: {reason}); "
            "use a model.safetensors of the model, or convert this file where you trust its source") from None
    except (RuntimeError, EOFError) as error:   # torch's "failed finding central directory", a cut file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({' '.join(str(error).split())[:200]}); "
                              "copy it again from the model's source") from None


def _safetensors(path: str, read):
    """read(path) with a truncated or corrupt file named in one line."""
    from safetensors import SafetensorError
    try:
        return read(path)
    except SafetensorError as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}; {os.path.getsize(path):,} "
                              "bytes): the file is cut short or damaged; copy it again from the model's "
                              "source") from None


def read_hf_weights(directory: str) -> dict[str, np.ndarray]:
    """name -> float32 array, from model.safetensors or pytorch_model.bin."""
    path = _weights_file(directory)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        weights = _safetensors(path, load_file)
    else:
        weights = {k: v.float().numpy() for k, v in _torch_state_dict(path).items()}
    return {k: np.asarray(v, np.float32) for k, v in weights.items()}


def read_hf_weight_names(directory: str) -> set[str]:
    """The tensor names only: for safetensors a header read, no weights loaded."""
    path = _weights_file(directory)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        def names(file):
            with safe_open(file, "np") as f:
                return set(f.keys())

        return _safetensors(path, names)
    return set(_torch_state_dict(path))


def _body_prefix(names, family: Family, directory: str) -> str:
    """'roberta.' / 'bert.' in a *ForMaskedLM checkpoint, '' in a bare encoder (XLMRobertaModel)."""
    for prefix in (family.body, ""):
        if f"{prefix}embeddings.word_embeddings.weight" in names:
            return prefix
    raise CheckpointError(f"{directory}: no tensor '{family.body}embeddings.word_embeddings.weight' "
                          f"(is this a {family.masked_lm} / {family.masked_lm.replace('ForMaskedLM', 'Model')} "
                          "checkpoint?)")


def model_config_from_hf(hf: dict, weight_names=(), path: str = "config.json"):
    """The xlm_jax `model` config section equivalent to a transformers config.json.

    `weight_names` decides what config.json cannot: whether there is a pooler.
    """
    family = family_of_model_type(hf.get("model_type"), path)
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {hf['hidden_act']!r}; xlm_jax implements 'gelu' (erf)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type {hf['position_embedding_type']!r}; "
                              "xlm_jax implements 'absolute'")
    if not hf.get("tie_word_embeddings", True):
        raise CheckpointError(f"{path}: tie_word_embeddings is false; xlm_jax's MLM decoder is tied "
                              "to the word embeddings")
    m = default_config().model
    m.num_layers = hf["num_hidden_layers"]
    m.hidden_size = hf["hidden_size"]
    m.num_heads = hf["num_attention_heads"]
    m.mlp_dim = hf["intermediate_size"]
    m.vocab_size = hf["vocab_size"]
    m.layer_norm_eps = hf.get("layer_norm_eps", 1e-12)
    m.dropout_rate = hf.get("hidden_dropout_prob", 0.1)
    m.attention_dropout_rate = hf.get("attention_probs_dropout_prob", 0.1)
    m.initializer_range = hf.get("initializer_range", 0.02)
    m.type_vocab_size = hf.get("type_vocab_size", 2)
    if family is BERT:
        m.pad_token_id = hf.get("pad_token_id", 0)
        m.position_offset = 0
    else:
        m.pad_token_id = hf.get("pad_token_id", 1)
        m.position_offset = m.pad_token_id + 1
    m.max_len = hf["max_position_embeddings"] - m.position_offset
    names = set(weight_names)
    m.pooler = any(f"{p}pooler.dense.weight" in names for p in (family.body, ""))
    return m


# --- one table of tensors, used in both directions -----------------------------------------

@dataclasses.dataclass(frozen=True)
class Tensor:
    """One transformers tensor and where it lives in our param tree."""
    ours: tuple[str, ...]
    theirs: str                 # per-layer names contain '{i}'
    to_ours: Callable = lambda w: w
    to_theirs: Callable = lambda w: w


def _tensors(m, family: Family, body: str, has_head: bool) -> list[Tensor]:
    h, heads = m.hidden_size, m.num_heads
    d = h // heads
    transpose = dict(to_ours=lambda w: w.T, to_theirs=lambda w: w.T)
    layer = ("encoder", "layers", "layer")
    per_layer = f"{body}encoder.layer.{{i}}."
    tensors = []

    def linear(ours, theirs, **convert):
        tensors.append(Tensor(ours + ("kernel",), f"{theirs}.weight", **(convert or transpose)))

    def with_bias(ours, theirs, **bias_convert):
        tensors.append(Tensor(ours + ("bias",), f"{theirs}.bias", **bias_convert))

    def layer_norm(ours, theirs):
        tensors.append(Tensor(ours + ("scale",), f"{theirs}.weight"))
        tensors.append(Tensor(ours + ("bias",), f"{theirs}.bias"))

    for name in ("word", "position", "token_type"):
        tensors.append(Tensor(("encoder", "embeddings", f"{name}_embeddings", "embedding"),
                              f"{body}embeddings.{name}_embeddings.weight"))
    layer_norm(("encoder", "embeddings", "LayerNorm"), f"{body}embeddings.LayerNorm")
    for name in ("query", "key", "value"):
        theirs = f"{per_layer}attention.self.{name}"
        linear(layer + ("attention", name), theirs, to_ours=lambda w: w.T.reshape(h, heads, d),
               to_theirs=lambda k: k.reshape(h, h).T)
        with_bias(layer + ("attention", name), theirs, to_ours=lambda b: b.reshape(heads, d),
                  to_theirs=lambda b: b.reshape(h))
    linear(layer + ("attention", "output"), f"{per_layer}attention.output.dense",
           to_ours=lambda w: w.T.reshape(heads, d, h), to_theirs=lambda k: k.reshape(h, h).T)
    with_bias(layer + ("attention", "output"), f"{per_layer}attention.output.dense")
    layer_norm(layer + ("attention_LayerNorm",), f"{per_layer}attention.output.LayerNorm")
    for ours, theirs in (("intermediate", "intermediate.dense"), ("output", "output.dense")):
        linear(layer + (ours,), per_layer + theirs)
        with_bias(layer + (ours,), per_layer + theirs)
    layer_norm(layer + ("output_LayerNorm",), f"{per_layer}output.LayerNorm")
    if m.pooler:
        linear(("pooler", "dense"), f"{body}pooler.dense")
        with_bias(("pooler", "dense"), f"{body}pooler.dense")
    if has_head:
        linear(("lm_head", "dense"), family.head_dense)
        with_bias(("lm_head", "dense"), family.head_dense)
        layer_norm(("lm_head", "LayerNorm"), family.head_layer_norm)
        tensors.append(Tensor(("lm_head", "bias"), family.head_bias))
    return tensors


def _expected_shapes(m) -> dict[tuple, tuple]:
    """Param shapes in transformers' layout: the vocabulary at its true size, unpadded."""
    from xlm_jax.models.masked_lm import MaskedLM
    unpadded = m.copy_and_resolve_references()
    unpadded.vocab_pad_multiple = 1
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda x: MaskedLM(unpadded).init(jax.random.key(0), x), ids)
    flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(shapes["params"]))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


# --- import -------------------------------------------------------------------------------

def params_from_hf(weights: dict, m, family: Family, directory: str = "") -> tuple[dict, bool, list]:
    """(xlm_jax params, whether the checkpoint had an MLM head, names of the tensors left out).

    The params are in the model layout of `m`: vocabulary rows zero-padded to padded_vocab_size(m).
    """
    body = _body_prefix(weights, family, directory)
    has_head = f"{family.head_dense}.weight" in weights
    expected = _expected_shapes(m)
    used, flat = set(), {}

    def take(name: str, ours: tuple, to_ours, layer_axis: bool):
        if name not in weights:
            raise CheckpointError(f"{directory}: tensor {name!r} is missing")
        value = to_ours(weights[name])
        want = expected[ours][1:] if layer_axis else expected[ours]
        if value.shape != want:
            raise CheckpointError(f"{directory}: tensor {name!r} has shape {weights[name].shape}, "
                                  f"which does not fit config.json (xlm_jax {ours[-2]} needs {want})")
        used.add(name)
        return value

    for t in _tensors(m, family, body, has_head):
        if "{i}" in t.theirs:
            flat[t.ours] = np.stack([take(t.theirs.format(i=i), t.ours, t.to_ours, True)
                                     for i in range(m.num_layers)])
        else:
            flat[t.ours] = take(t.theirs, t.ours, t.to_ours, False)
    _check_tied_copies(weights, family, flat, directory, used)
    leftover = sorted(k for k in set(weights) - used if not k.endswith("position_ids"))
    dropped = [k for k in leftover if k.startswith(family.dropped)]
    unknown = [k for k in leftover if k not in dropped]
    if unknown:
        raise CheckpointError(f"{directory}: tensors xlm_jax has no place for: {', '.join(unknown[:8])}"
                              + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    params = resize_vocab_rows(flax.traverse_util.unflatten_dict(flat), padded_vocab_size(m))
    return params, has_head, dropped


def _check_tied_copies(weights, family: Family, flat, directory, used: set) -> None:
    """A stored decoder weight/bias must equal the word embeddings / head bias it is tied to."""
    ties = {f"{family.decoder}.weight": ("encoder", "embeddings", "word_embeddings", "embedding"),
            f"{family.decoder}.bias": ("lm_head", "bias")}
    for name, ours in ties.items():
        if name in weights and ours in flat:
            if not np.array_equal(weights[name], flat[ours]):
                raise CheckpointError(f"{directory}: tensor {name!r} differs from {'/'.join(ours)}; "
                                      "xlm_jax's MLM decoder is tied and cannot hold a separate one")
            used.add(name)


@dataclasses.dataclass
class Imported:
    model: object               # the xlm_jax `model` config section
    params: dict                # in its model layout (vocabulary rows padded to padded_vocab_size)
    has_head: bool              # False for a bare encoder (XLMRobertaModel, BertModel)
    dropped: list               # tensors left out, e.g. BERT's next-sentence head


def import_hf(directory: str) -> Imported:
    """A transformers XLM-R or BERT directory as an xlm_jax model config and params."""
    config_path = os.path.join(directory, "config.json")
    hf = read_hf_config(directory)
    weights = read_hf_weights(directory)
    m = model_config_from_hf(hf, weights, config_path)
    params, has_head, dropped = params_from_hf(weights, m, family_of_model_type(hf["model_type"]),
                                               directory)
    return Imported(m, params, has_head, dropped)


# --- export -------------------------------------------------------------------------------

def hf_config(m) -> dict:
    """config.json for transformers, from the xlm_jax `model` config section."""
    if m.language_specific_layers:
        raise ConfigError(f"config field `model.language_specific_layers`: got {m.language_specific_layers}, "
                          "but transformers' XLM-R / BERT have one copy of every layer, not one per "
                          "language; only a model with language_specific_layers=0 can be exported")
    if m.language_specific_positions:
        raise ConfigError("config field `model.language_specific_positions`: got True, but transformers' XLM-R / "
                          "BERT have one position table, not one per language; only a model with "
                          "language_specific_positions=False can be exported")
    if m.num_languages:
        raise ConfigError("config field `model.num_languages`: XLM-style language embeddings have no "
                          "transformers XLM-R / BERT equivalent; export needs num_languages=0")
    family = family_of_config(m)
    config = {
        "architectures": [family.masked_lm], "model_type": family.export_type,
        "vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
        "intermediate_size": m.mlp_dim, "hidden_act": "gelu",
        "hidden_dropout_prob": m.dropout_rate, "attention_probs_dropout_prob": m.attention_dropout_rate,
        "max_position_embeddings": m.max_len + m.position_offset, "type_vocab_size": m.type_vocab_size,
        "initializer_range": m.initializer_range, "layer_norm_eps": m.layer_norm_eps,
        "pad_token_id": m.pad_token_id, "position_embedding_type": "absolute",
        "tie_word_embeddings": True, "torch_dtype": "float32",
    }
    if family is XLM_R:
        config.update(bos_token_id=0, eos_token_id=2)
    return config


def hf_weights(m, params) -> dict[str, np.ndarray]:
    """transformers tensor name -> float32 array, as `save_pretrained` stores them: exactly
    model.vocab_size vocabulary rows (the model layout's padding is left out)."""
    family = family_of_config(m)
    flat = flax.traverse_util.flatten_dict(resize_vocab_rows(jax.device_get(params), m.vocab_size))
    out = {}
    for t in _tensors(m, family, family.body, has_head=True):
        value = np.asarray(flat[t.ours], np.float32)
        if "{i}" in t.theirs:
            for i in range(m.num_layers):
                out[t.theirs.format(i=i)] = np.ascontiguousarray(t.to_theirs(value[i]))
        else:
            out[t.theirs] = np.ascontiguousarray(t.to_theirs(value))
    return out


def export_hf(m, params, tokenizer, directory: str, log=print) -> None:
    """Writes a transformers directory: config.json, model.safetensors and tokenizer files.

    Everything is written to a temporary sibling first and renamed into place, so an
    interrupted export leaves no half-written model behind. `directory` must not exist
    or be empty: exporting never overwrites files.
    """
    from safetensors.numpy import save_file

    from xlm_jax.data.tokenizers import write_hf_tokenizer_files

    if os.path.exists(directory) and os.listdir(directory):
        raise CheckpointError(f"export directory {directory} is not empty; choose a new one")
    if tokenizer.vocab_size != m.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} ids but model.vocab_size is "
                              f"{m.vocab_size}; export the tokenizer the model was trained with")
    config, weights = hf_config(m), hf_weights(m, params)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        save_file(weights, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        write_hf_tokenizer_files(tokenizer, staging, model_max_length=m.max_len, log=log)
        if os.path.exists(directory):
            os.rmdir(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- starting a run from a transformers directory ----------------------------------------

ARCHITECTURE_FIELDS = ("num_layers", "hidden_size", "num_heads", "mlp_dim", "vocab_size", "max_len",
                       "type_vocab_size", "pad_token_id", "position_offset", "layer_norm_eps", "pooler")


def hf_architecture(directory: str) -> dict:
    """For `init_from=hf:DIR`: the model's architecture fields from DIR's config.json (dtype,
    remat and dropout stay the run's). Reads no weights, only their names: a resumed run does
    not need them."""
    imported = model_config_from_hf(read_hf_config(directory), read_hf_weight_names(directory),
                                    os.path.join(directory, "config.json"))
    return {field: imported[field] for field in ARCHITECTURE_FIELDS}


def adopt_hf_tokenizer(directory: str, workdir: str, vocab_size: int) -> None:
    """Puts DIR's tokenizer in the workdir as the run's (once: a resumed run keeps its own)."""
    from xlm_jax.data.tokenizers import save_tokenizer, tokenizer_exists, tokenizer_from_hf_directory

    if not tokenizer_exists(workdir):
        tokenizer = tokenizer_from_hf_directory(directory)
        if tokenizer.vocab_size != vocab_size:
            raise CheckpointError(f"{directory}: the tokenizer gives {tokenizer.vocab_size} ids but "
                                  f"config.json has vocab_size {vocab_size}")
        save_tokenizer(tokenizer, workdir)
