"""The XLM-R / BERT encoder, structurally identical to transformers' XLMRobertaModel.

Embeddings (word + position + token type [+ XLM language]) -> LayerNorm -> dropout,
then post-LN transformer blocks run under `nn.scan`, so compile time does not grow
with depth and every per-layer weight carries a leading `layers` axis. With
model.language_specific_layers = k, the bottom k blocks have one copy per language
(`language_layers`, weights [k, languages, ...]) and the top num_layers - k are shared
(`layers`); k = 0 is XLM-R, whose params and outputs are exactly those of transformers.
With model.language_specific_positions, each language has its own position embeddings
(Dufter & Schuetze 2020's "lang-pos"): the table holds one block of rows per language.
Every parameter names its logical axes (see xlm_jax/parallel/rules.py).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models.attention import attend
from xlm_jax.models.dropout import Dropout
from xlm_jax.models.vocab_padding import padded_vocab_size

Dtype = Any

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def dense_init(config):
    return nn.initializers.normal(stddev=config.initializer_range)


def param_with_axes(init, axes):
    return nn.with_logical_partitioning(init, axes)


def zero_rows_from(init, first_zero_row: int):
    """`init` with rows first_zero_row... set to 0: the vocabulary padding starts (and stays) zero."""
    def init_with_zero_rows(key, shape, dtype=jnp.float32):
        rows = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
        return jnp.where(rows < first_zero_row, init(key, shape, dtype), 0).astype(dtype)
    return init_with_zero_rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """LayerNorm over the last axis in float32, whose backward pass keeps only x-hat and 1/std.

    Autodiff of the textbook formula saves several [tokens, hidden] intermediates per
    LayerNorm; the closed-form gradient needs only the normalized input and 1/std.
    """
    return _normalize_forward(x, scale, bias, epsilon)[0]


def _normalize_forward(x, scale, bias, epsilon):
    x32 = x.astype(jnp.float32)
    centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
    x_hat = centered * inv_std
    return (x_hat * scale + bias).astype(x.dtype), (x_hat, inv_std, scale)


def _normalize_backward(epsilon, residuals, grad):
    x_hat, inv_std, scale = residuals
    dtype, grad = grad.dtype, grad.astype(jnp.float32)
    tokens = grad.reshape(-1, grad.shape[-1])
    d_scale = jnp.sum(tokens * x_hat.reshape(tokens.shape), axis=0)
    d_bias = jnp.sum(tokens, axis=0)
    d_hat = grad * scale
    d_x = inv_std * (d_hat - jnp.mean(d_hat, axis=-1, keepdims=True)
                     - x_hat * jnp.mean(d_hat * x_hat, axis=-1, keepdims=True))
    return d_x.astype(dtype), d_scale, d_bias


normalize.defvjp(_normalize_forward, _normalize_backward)


class LayerNorm(nn.Module):
    """flax's LayerNorm parameters (scale, bias), computed by `normalize`."""
    epsilon: float
    dtype: Dtype

    @nn.compact
    def __call__(self, x):
        features = (x.shape[-1],)
        scale = self.param("scale", param_with_axes(nn.initializers.ones, ("embed",)), features, jnp.float32)
        bias = self.param("bias", param_with_axes(nn.initializers.zeros, ("embed",)), features, jnp.float32)
        return normalize(x, scale, bias, self.epsilon).astype(self.dtype)


def layer_norm(config, name: str) -> LayerNorm:
    return LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.dtype(config.dtype), name=name)


def over_tokens(fn, x: jax.Array) -> jax.Array:
    """fn applied to x viewed as [tokens, features], reshaped back to x's leading dims.

    A weight gradient of a [batch, length, features] matmul contracts two dims, which
    XLA:CPU runs ~2x slower than the same matmul over one flattened token dim.
    """
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(x.shape[:-1] + y.shape[1:])


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU whose backward pass keeps only x.

    Autodiff of erf-GELU saves three [tokens, mlp_dim] intermediates per layer besides x;
    recomputing Phi(x) + x phi(x) from x in the backward pass is one elementwise pass and
    saves that memory traffic (and, on CPU, the page faults of a bigger temp buffer).
    """
    return jax.nn.gelu(x, approximate=False)


def _gelu_forward(x):
    return gelu(x), x


def _gelu_backward(x, grad):
    x32 = x.astype(jnp.float32)
    cdf = 0.5 * jax.lax.erfc(-x32 * (2 ** -0.5))
    pdf = jnp.exp(-0.5 * x32 * x32) * (2 * jnp.pi) ** -0.5
    return ((grad.astype(jnp.float32) * (cdf + x32 * pdf)).astype(grad.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)


def fairseq_position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """XLM-R positions: real tokens count up from pad_token_id + 1, padding stays at pad_token_id."""
    is_token = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(is_token, axis=1) * is_token + pad_token_id


class Embeddings(nn.Module):
    config: Any

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        # padded_vocab_size rows, so the vocab dim shards evenly (models/vocab_padding.py).
        self.word_embeddings = nn.Embed(
            padded_vocab_size(c), c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=param_with_axes(zero_rows_from(dense_init(c), c.vocab_size),
                                           ("vocab", "embed")))
        # model.language_specific_positions: one table of positions per language, stacked in rows
        tables = c.num_languages if c.language_specific_positions else 1
        self.position_embeddings = nn.Embed(
            tables * (c.max_len + c.position_offset), c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=param_with_axes(dense_init(c), (None, "embed")))
        self.token_type_embeddings = nn.Embed(
            c.type_vocab_size, c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=param_with_axes(dense_init(c), (None, "embed")))
        if c.num_languages:
            self.language_embeddings = nn.Embed(
                c.num_languages, c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                embedding_init=param_with_axes(dense_init(c), (None, "embed")))
        self.layer_norm = layer_norm(c, "LayerNorm")
        self.dropout = Dropout(c.dropout_rate)

    def __call__(self, input_ids, token_type_ids=None, position_ids=None, language_ids=None,
                 deterministic=True):
        c = self.config
        if position_ids is None:
            if c.position_offset:
                position_ids = fairseq_position_ids(input_ids, c.pad_token_id)
            else:
                position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if c.language_specific_positions:   # language i reads rows i * (max_len + offset) ...
            if language_ids is None:
                raise ValueError("this model has a position table per language "
                                 "(model.language_specific_positions): pass language_ids")
            position_ids = position_ids + language_ids * (c.max_len + c.position_offset)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))
        if c.num_languages:
            if language_ids is None:
                raise ValueError("this model has language embeddings (model.num_languages > 0): "
                                 "pass language_ids")
            x = x + self.language_embeddings(language_ids)
        x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def attend(self, hidden):
        """Logits against the (tied) word embeddings, padded_vocab_size wide: the MLM decoder."""
        return self.word_embeddings.attend(hidden)


class ProjectionWeights(nn.Module):
    """The `kernel` and `bias` of one attention projection, as flax's Dense names them."""
    config: Any
    kernel_axes: tuple
    bias_axes: tuple

    @nn.compact
    def __call__(self):
        c = self.config
        sizes = {"embed": c.hidden_size, "heads": c.num_heads, "kv": c.hidden_size // c.num_heads}
        kernel = self.param("kernel", param_with_axes(dense_init(c), self.kernel_axes),
                            tuple(sizes[a] for a in self.kernel_axes), jnp.float32)
        bias = self.param("bias", param_with_axes(nn.initializers.zeros, self.bias_axes),
                          tuple(sizes[a] for a in self.bias_axes), jnp.float32)
        dtype = jnp.dtype(c.dtype)
        return kernel.astype(dtype), bias.astype(dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention; query, key and value come from one matmul.

    Their kernels keep the head axes apart (so tensor parallelism can split `heads`) and
    are stacked per call into [hidden, 3, heads, head_dim]: one [tokens, 3 * hidden]
    matmul instead of three [tokens, hidden] ones, which on CPU keeps the cores busier.
    The attention itself runs as `model.attention` says (models/attention.py).
    """
    config: Any

    @nn.compact
    def __call__(self, x, attention_mask, deterministic):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        axes = ("batch", "length", "heads", "kv")
        weights = [ProjectionWeights(c, ("embed", "heads", "kv"), ("heads", "kv"), name=name)()
                   for name in ("query", "key", "value")]
        kernel = jnp.stack([kernel for kernel, _ in weights], axis=1)
        bias = jnp.stack([bias for _, bias in weights])
        qkv = over_tokens(lambda t: jnp.einsum("td,dchk->tchk", t, kernel), x.astype(dtype)) + bias
        query, key, value = (nn.with_logical_constraint(qkv[:, :, i], axes) for i in range(3))

        dropout = lambda probs: Dropout(c.attention_dropout_rate)(probs, deterministic=deterministic)
        context = nn.with_logical_constraint(attend(c, query, key, value, attention_mask, dropout), axes)
        kernel, bias = ProjectionWeights(c, ("heads", "kv", "embed"), ("embed",), name="output")()
        tokens = context.reshape(*context.shape[:2], c.hidden_size)
        return over_tokens(lambda t: t @ kernel.reshape(c.hidden_size, -1), tokens) + bias


class EncoderLayer(nn.Module):
    """One post-LN block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
    config: Any

    @nn.compact
    def __call__(self, x, attention_mask, deterministic):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        attended = SelfAttention(c, name="attention")(x, attention_mask, deterministic)
        attended = Dropout(c.dropout_rate)(attended, deterministic=deterministic)
        x = layer_norm(c, "attention_LayerNorm")(x + attended)

        h = over_tokens(nn.Dense(c.mlp_dim, dtype=dtype, param_dtype=jnp.float32,
                                 kernel_init=param_with_axes(dense_init(c), ("embed", "mlp")),
                                 bias_init=param_with_axes(nn.initializers.zeros, ("mlp",)),
                                 name="intermediate"), x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = gelu(h)
        h = over_tokens(nn.Dense(c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                                 kernel_init=param_with_axes(dense_init(c), ("mlp", "embed")),
                                 bias_init=param_with_axes(nn.initializers.zeros, ("embed",)),
                                 name="output"), h)
        h = Dropout(c.dropout_rate)(h, deterministic=deterministic)
        x = layer_norm(c, "output_LayerNorm")(x + h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class ScannedLayer(nn.Module):
    """EncoderLayer in the (carry, per-layer output) form `nn.scan` wants."""
    config: Any

    @nn.compact
    def __call__(self, x, attention_mask, deterministic, keep_hidden):
        x = EncoderLayer(self.config, name="layer")(x, attention_mask, deterministic)
        return x, (x if keep_hidden else None)


def select_language(per_language: jax.Array, language_ids: jax.Array) -> jax.Array:
    """[languages, B, S, H] states -> [B, S, H]: each token's state from its own language's copy.

    A masked sum rather than a gather: elementwise, so exact in any matmul precision, and
    it keeps the batch sharding of both inputs.
    """
    languages = jnp.arange(per_language.shape[0])[:, None, None, None]
    mine = language_ids[None, :, :, None] == languages
    return jnp.sum(jnp.where(mine, per_language, 0), axis=0).astype(per_language.dtype)


class LanguageLayer(nn.Module):
    """An EncoderLayer with a copy of its weights per language (params [languages, ...]), in
    ScannedLayer's form.

    Every copy runs on every token and each token keeps its own language's output, so the
    layer costs num_languages shared ones in compute (and activations). Attention still
    mixes languages (a TLM pair): each token's state is computed by its language's weights
    from all the states of the layer below. The language axis is never sharded.
    """
    config: Any

    @nn.compact
    def __call__(self, x, attention_mask, language_ids, deterministic, keep_hidden):
        c = self.config
        copies = nn.vmap(EncoderLayer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                         in_axes=(None, None, None), axis_size=c.num_languages,
                         metadata_params={nn.PARTITION_NAME: "languages"})
        per_language = copies(c, name="layer")(x, attention_mask, deterministic)
        x = nn.with_logical_constraint(select_language(per_language, language_ids), ("batch", "length", "embed"))
        return x, (x if keep_hidden else None)


def layer_stack(block, config, length: int, num_inputs: int):
    """`length` blocks under nn.scan (weights get a leading `layers` axis) and model.remat.

    A block is called as (x, *inputs, deterministic, keep_hidden): x is the carry; the
    `num_inputs` arrays and the two flags are the same for every layer.
    """
    if config.remat != "none":
        # static_argnums count `self` as 0, then x, the inputs, deterministic, keep_hidden.
        block = nn.remat(block, policy=REMAT_POLICIES[config.remat], prevent_cse=False,
                         static_argnums=(num_inputs + 2, num_inputs + 3))
    return nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * (num_inputs + 2), length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(config)


class Encoder(nn.Module):
    """Token ids -> contextual hidden states [batch, length, hidden]."""
    config: Any

    def setup(self):
        c = self.config
        self.embeddings = Embeddings(c)
        if c.language_specific_layers:
            self.language_layers = layer_stack(LanguageLayer, c, c.language_specific_layers, num_inputs=2)
        if c.num_layers > c.language_specific_layers:
            self.layers = layer_stack(ScannedLayer, c, c.num_layers - c.language_specific_layers, num_inputs=1)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 language_ids=None, deterministic=True, output_hidden_states=False):
        """Returns (last hidden state, all hidden states [layers + 1, ...] or None).

        `attention_mask` (1 = token, 0 = padding) defaults to `input_ids != pad_token_id`.
        Hidden state 0 is the embedding output, as in transformers; then the language-specific
        layers', then the shared ones'.
        """
        c = self.config
        if attention_mask is None:
            attention_mask = input_ids != c.pad_token_id
        attention_mask = jnp.asarray(attention_mask, bool)
        x = self.embeddings(input_ids, token_type_ids, position_ids, language_ids, deterministic)
        x = x.astype(jnp.dtype(c.dtype))
        hidden = [x[None]]
        if c.language_specific_layers:
            x, per_layer = self.language_layers(x, attention_mask, language_ids, deterministic, output_hidden_states)
            hidden.append(per_layer)
        if c.num_layers > c.language_specific_layers:
            x, per_layer = self.layers(x, attention_mask, deterministic, output_hidden_states)
            hidden.append(per_layer)
        if not output_hidden_states:
            return x, None
        return x, jnp.concatenate(hidden, axis=0)
