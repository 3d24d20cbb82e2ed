"""Shared builders for tests: tiny configs, random MLM batches, a train setup on a mesh.

Everything here is deterministic (numpy Generator / jax keys from explicit seeds).
On CPU nearly all of a test's time is XLA compilation, so helpers build params on the
host (no jitted init) and share jitted functions between tests (jit_apply,
cached_train_setup) instead of compiling the same program twice.
"""
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax.config import default_config
from xlm_jax.evaluation.heldout_mlm import masked_lm_loss_step
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.modes.prepare import validate
from xlm_jax.objectives.registry import build_objectives, streams
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.builder import build_trainer

PAD, BOS, EOS = 1, 0, 2
FIRST_REGULAR_ID = 4


def tiny_config(num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64, vocab_size=96,
                max_len=32, seq_len=16, batch_size=8, dropout=0.0, **train_overrides):
    """A validated default_config() shrunk to a model that compiles in seconds.

    Defaults are chosen so every size divides by 2 and the hidden size by 8, so the
    same config can be laid out on any (data, fsdp, tensor) mesh of 8 devices.
    """
    config = default_config()
    m = config.model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim = num_layers, hidden_size, num_heads, mlp_dim
    m.vocab_size, m.max_len = vocab_size, max_len
    m.dropout_rate = m.attention_dropout_rate = dropout
    config.data.seq_len = seq_len
    t = config.train
    t.batch_size = batch_size
    t.num_steps = 100
    t.warmup_steps = 10
    t.learning_rate = 1e-3
    for key, value in train_overrides.items():
        t[key] = value
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    return validate(config)


def random_ids(rng: np.random.Generator, batch: int, seq_len: int, vocab_size: int,
               lengths=None) -> np.ndarray:
    """<s> w1 ... wn </s> <pad>...: regular tokens, real length per row, padding id 1."""
    ids = rng.integers(FIRST_REGULAR_ID, vocab_size, (batch, seq_len)).astype(np.int32)
    ids[:, 0] = BOS
    if lengths is None:
        lengths = [seq_len] * batch
    for row, length in enumerate(lengths):
        ids[row, length - 1] = EOS
        ids[row, length:] = PAD
    return ids


def random_batch(config, seed: int = 0, batch_size=None, num_predictions: int = 4,
                 padded: bool = True, empty_slots: bool = True) -> dict:
    """An MLM batch: input_ids [B,S], masked_positions/ids/weights [B,P] (numpy).

    With `padded`, odd rows end early (padding id 1 after </s>); with `empty_slots`,
    the last prediction slot of every other row has weight 0 (and an arbitrary
    target), as the data pipeline produces for short sequences.
    """
    rng = np.random.default_rng(seed)
    b = batch_size or config.train.batch_size
    s, v = config.data.seq_len, config.model.vocab_size
    lengths = [s - (3 + row % 4) if (padded and row % 2) else s for row in range(b)]
    ids = random_ids(rng, b, s, v, lengths)
    positions = np.stack([np.sort(rng.choice(np.arange(1, lengths[r] - 1), num_predictions, replace=False))
                          for r in range(b)]).astype(np.int32)
    masked_ids = np.take_along_axis(ids, positions, axis=1).copy()
    mask_id = v - 1
    np.put_along_axis(ids, positions, mask_id, axis=1)
    weights = np.ones((b, num_predictions), np.float32)
    if empty_slots:
        weights[::2, -1] = 0.0
        positions[::2, -1] = 0
        masked_ids[::2, -1] = PAD
    return {"input_ids": ids, "masked_positions": positions, "masked_ids": masked_ids.astype(np.int32),
            "masked_weights": weights}


def param_shapes(config, **init_kwargs):
    """Boxed abstract params of MaskedLM(config.model): shapes and logical axes, nothing computed."""
    model = MaskedLM(config.model)
    ids = jnp.full((1, config.data.seq_len), FIRST_REGULAR_ID, jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, **init_kwargs))["params"]


def random_params(config, seed: int = 0, scale: float = 0.15, **init_kwargs):
    """(model, params): float32 params of MaskedLM's shapes, every leaf drawn at random.

    Freshly initialized biases are 0 and LayerNorm scales 1, which would hide a forward
    pass that forgets or swaps them; random values make every parameter matter. LayerNorm
    scales are drawn around 1 to keep activations well conditioned. Built on the host
    (no jitted init to compile), so tests stay fast.
    """
    rng = np.random.default_rng(seed)
    shapes = nn.meta.unbox(param_shapes(config, **init_kwargs))

    def draw(path, leaf):
        x = rng.normal(0.0, scale, leaf.shape).astype(np.float32)
        return x + 1.0 if getattr(path[-1], "key", None) == "scale" else x

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    return MaskedLM(config.model), jax.tree.map(jnp.asarray, params)


_APPLY_CACHE = {}


def jit_apply(config):
    """model.apply jitted once per model config (compiles are most of these tests' time)."""
    key = repr(sorted(config.model.to_dict().items()))
    if key not in _APPLY_CACHE:
        _APPLY_CACHE[key] = jax.jit(MaskedLM(config.model).apply,
                                    static_argnames=("deterministic", "output_hidden_states"))
    return _APPLY_CACHE[key]


def np_mean_cross_entropy(logits, targets, weights):
    """sum_i w_i * (logsumexp(logits_i) - logits_i[target_i]) / sum_i w_i, in float64."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None], axis=-1)[..., 0]
    weights = np.asarray(weights, np.float64)
    return float(((lse - picked) * weights).sum() / weights.sum())


# ---------------------------------------------------------------------------------------
# numpy reference of the whole MaskedLM forward pass (float64), written from the
# XLM-R / BERT papers and transformers' RobertaModel, not from the flax modules.
# ---------------------------------------------------------------------------------------

_erf = np.vectorize(math.erf)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_fairseq_positions(ids, pad):
    """Row by row: real tokens get pad+1, pad+2, ...; padding keeps position `pad`."""
    out = np.empty_like(ids)
    for b in range(ids.shape[0]):
        n = pad
        for s in range(ids.shape[1]):
            if ids[b, s] != pad:
                n += 1
                out[b, s] = n
            else:
                out[b, s] = pad
    return out


def np_forward(params, ids, mc, attention_mask=None, token_type_ids=None, language_ids=None):
    """Logits [B,S,V] and hidden states [L+1,B,S,H] of a post-LN XLM-R encoder + MLM head.

    V is the true vocabulary, mc.vocab_size: the model layout's padding rows are not used.
    """
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    ids = np.asarray(ids)
    enc, head = p["encoder"], p["lm_head"]
    emb = enc["embeddings"]
    eps = mc.layer_norm_eps
    if attention_mask is None:
        attention_mask = ids != mc.pad_token_id
    if mc.position_offset:
        positions = np_fairseq_positions(ids, mc.pad_token_id)
    else:
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    if token_type_ids is None:
        token_type_ids = np.zeros_like(ids)
    word = emb["word_embeddings"]["embedding"][:mc.vocab_size]
    x = word[ids] + emb["position_embeddings"]["embedding"][positions]
    x = x + emb["token_type_embeddings"]["embedding"][token_type_ids]
    if mc.num_languages:
        x = x + emb["language_embeddings"]["embedding"][language_ids]
    x = np_layer_norm(x, emb["LayerNorm"], eps)
    hidden = [x]
    head_dim = mc.hidden_size // mc.num_heads
    key_bias = np.where(np.asarray(attention_mask)[:, None, None, :], 0.0, -1e30)
    for layer in range(mc.num_layers):
        lp = jax.tree.map(lambda a, layer=layer: a[layer], enc["layers"]["layer"])
        att = lp["attention"]
        q, k, v = (np.einsum("bsd,dhk->bshk", x, att[n]["kernel"]) + att[n]["bias"]
                   for n in ("query", "key", "value"))
        scores = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(head_dim) + key_bias
        ctx = np.einsum("bhqs,bshk->bqhk", np_softmax(scores), v)
        attended = np.einsum("bqhk,hkd->bqd", ctx, att["output"]["kernel"]) + att["output"]["bias"]
        x = np_layer_norm(x + attended, lp["attention_LayerNorm"], eps)
        h = np_gelu(x @ lp["intermediate"]["kernel"] + lp["intermediate"]["bias"])
        h = h @ lp["output"]["kernel"] + lp["output"]["bias"]
        x = np_layer_norm(x + h, lp["output_LayerNorm"], eps)
        hidden.append(x)
    h = np_gelu(x @ head["dense"]["kernel"] + head["dense"]["bias"])
    h = np_layer_norm(h, head["LayerNorm"], eps)
    logits = h @ word.T + head["bias"][:mc.vocab_size]
    return logits, np.stack(hidden)


def objective_streams(config):
    """The data streams of the config's objectives (MLM alone by default): what a run reads."""
    return streams(build_objectives(config))


@dataclasses.dataclass
class Setup:
    """The framework's trainer (train/builder.py) with what the tests do with it."""
    trainer: Any

    def __getattr__(self, name):   # config, mesh, rules, model, optimizer, shardings, rows, step, objectives
        return getattr(self.trainer, name)

    def new_state(self):
        """create_train_state: params initialized by the model's own (jitted, sharded) init."""
        return self.trainer.new_state()

    def state_from(self, params):
        """A fresh TrainState around given (host) params, placed with the state shardings."""
        return self.trainer.state_from_params(jax.tree.map(lambda x: np.array(x, np.float32), params))

    def put(self, batch, name: str = "mlm"):
        """{name: the batch on the devices}: what the step reads (a batch of objective `name`)."""
        return {name: jax.device_put({k: np.asarray(v) for k, v in batch.items()}, self.rows)}

    def eval_step(self):
        return masked_lm_loss_step(self.config.model, self.mesh, self.rules, self.shardings.params, self.rows)


def train_setup(config, devices=None, layout=(1, 1, 1), rules="fsdp", languages=("de", "en")) -> Setup:
    """The trainer of the config's objectives on a mesh of `layout` (`languages` size a
    language discriminator)."""
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = layout
    config.mesh.rules = rules
    validate(config)
    devices = jax.devices()[:int(np.prod(layout))] if devices is None else devices
    return Setup(build_trainer(config, make_mesh(config.mesh, devices), logical_axis_rules(rules), languages))


_SETUP_CACHE = {}


def cached_train_setup(config, layout=(1, 1, 1), rules="fsdp") -> Setup:
    """train_setup(), shared across test modules: a compiled step is reused, not rebuilt."""
    key = (config.to_json(sort_keys=True), layout, rules)
    if key not in _SETUP_CACHE:
        _SETUP_CACHE[key] = train_setup(config, layout=layout, rules=rules)
    return _SETUP_CACHE[key]


def to_numpy(tree):
    """A writable host copy of every leaf."""
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def assert_updated_params_close(actual, expected, learning_rate: float, rtol: float = 1e-5):
    """Params after an Adam step agree to rtol, and to 1% of one step's size absolutely.

    Adam's first update is lr * g / (|g| + eps): for a coordinate whose gradient is near
    eps (1e-6), float32 summation-order noise in g (a different layout or microbatching
    sums in another order) moves that coordinate by up to ~0.1% of lr. Wrong gradients
    move many coordinates by a sizeable fraction of lr, so 1% of lr still catches them.
    """
    actual, expected = to_numpy(actual), to_numpy(expected)
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, e), a in zip(paths, jax.tree.leaves(actual)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-2 * learning_rate,
                                   err_msg=jax.tree_util.keystr(path))


def write_corpus(directory, shared_data, languages, lines: int, pairs=None, pair_rows: int | None = None):
    """A corpus dir of the first `lines` lines of ../shared/data/mono/<lang>.txt per language, and
    of the first `pair_rows` (default `lines`) rows of parallel/<set>/<pair>.tsv for
    `pairs` = {"en-sw": "tico19", ...}; returns the directory."""
    for lang in languages:
        text = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        (directory / f"{lang}.txt").write_text("\n".join(text[:lines]) + "\n", encoding="utf-8")
    for pair, collection in (pairs or {}).items():
        text = (shared_data / "parallel" / collection / f"{pair}.tsv").read_text(encoding="utf-8").splitlines()
        (directory / f"{pair}.tsv").write_text("\n".join(text[:pair_rows or lines]) + "\n", encoding="utf-8")
    return directory
