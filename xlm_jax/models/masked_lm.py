"""The pretrained model: the encoder with its masked-LM head (and BERT's pooler), as one module.

Objectives (xlm_jax/objectives) read its named outputs: `hidden_states` (every layer, for
sentence vectors at a chosen layer) and `mlm_logits` (the LM head at masked positions), so
objectives reading one batch share one forward pass; `truncated` runs only the bottom layers.
"""
import copy
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models.encoder import Encoder, dense_init, gelu, layer_norm, over_tokens, param_with_axes
from xlm_jax.models.vocab_padding import padded_vocab_size


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """hidden [B, S, H], positions [B, P] -> [B, P, H]: the states at the given positions."""
    return jnp.take_along_axis(hidden, positions[..., None], axis=1)


@jax.custom_vjp
def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    """x + bias whose bias gradient is a ones-vector matmul.

    XLA:CPU reduces [tokens, 32k+ vocab] over tokens ~50x slower than it multiplies the
    same gradient by a ones vector (measured: 50 ms against 1 ms for 320 x 32000).
    """
    return x + bias


def _add_bias_backward(_, grad):
    rows = grad.reshape(-1, grad.shape[-1])
    return grad, (jnp.ones((1, rows.shape[0]), rows.dtype) @ rows)[0]


add_bias.defvjp(lambda x, bias: (x + bias, None), _add_bias_backward)


def mask_padded_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
    """Columns >= vocab_size (the vocabulary padding) set to the dtype's most negative value.

    Softmax gives them exactly 0 and argmax / top-k never pick them, so the loss and its
    gradients are those of the true vocabulary (the padded rows get zero gradient). An
    elementwise where on an iota keeps the padded width, so the vocab dim stays evenly
    sharded; slicing it off would not split evenly.
    """
    if logits.shape[-1] == vocab_size:
        return logits
    columns = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.where(columns < vocab_size, logits, jnp.finfo(logits.dtype).min)


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the word embeddings + output bias.

    Logits are padded_vocab_size wide; the padding columns are masked (mask_padded_vocab).
    """
    config: Any

    @nn.compact
    def __call__(self, hidden, embeddings):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        # Only the input dim is sharded: splitting this kernel over (fsdp, tensor) between the
        # tied embedding's lookup and decoder makes XLA's SPMD partitioner (jax 0.10) return
        # wrong gradients when the batch is split over (data, fsdp) (tests/parallel).
        h = over_tokens(nn.Dense(c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                                 kernel_init=param_with_axes(dense_init(c), ("embed", None)),
                                 bias_init=param_with_axes(nn.initializers.zeros, (None,)),
                                 name="dense"), hidden)
        h = gelu(h)
        h = layer_norm(c, "LayerNorm")(h)
        bias = self.param("bias", param_with_axes(nn.initializers.zeros, ("vocab",)),
                          (padded_vocab_size(c),), jnp.float32)
        logits = add_bias(over_tokens(embeddings.attend, h), bias.astype(dtype))
        logits = mask_padded_vocab(logits, c.vocab_size)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on the first token ([CLS] / <s>), for sentence-level heads.

    MLM does not train it; it is kept so that imported mBERT / XLM-R poolers survive a
    round of continued pretraining and export unchanged.
    """
    config: Any

    @nn.compact
    def __call__(self, hidden):
        c = self.config
        dense = nn.Dense(c.hidden_size, dtype=jnp.dtype(c.dtype), param_dtype=jnp.float32,
                         kernel_init=param_with_axes(dense_init(c), ("embed", None)),
                         bias_init=param_with_axes(nn.initializers.zeros, (None,)), name="dense")
        return jnp.tanh(dense(hidden[:, 0]))


class MaskedLM(nn.Module):
    """XLM-R for masked LM. The vocabulary projection runs only at `masked_positions`.

    With a 250k vocabulary, projecting every position is most of the model's FLOPs;
    gathering the ~15% masked positions first removes that cost. Pass
    `masked_positions=None` for logits at every position (interop tests, notebooks).
    """
    config: Any

    def setup(self):
        self.encoder = Encoder(self.config)
        self.lm_head = MaskedLMHead(self.config)
        if self.config.pooler:
            self.pooler = Pooler(self.config)

    def __call__(self, input_ids, masked_positions=None, *, attention_mask=None,
                 token_type_ids=None, position_ids=None, language_ids=None,
                 deterministic=True, output_hidden_states=False):
        hidden, all_hidden = self.encoder(
            input_ids, attention_mask, token_type_ids, position_ids, language_ids,
            deterministic, output_hidden_states)
        if self.config.pooler and self.is_initializing():
            self.pooler(hidden)  # creates its params; training never calls it
        if masked_positions is not None:
            hidden = gather_positions(hidden, masked_positions)
        logits = self.lm_head(hidden, self.encoder.embeddings)
        return (logits, all_hidden) if output_hidden_states else logits

    def hidden_states(self, input_ids, *, position_ids=None, language_ids=None, deterministic=True):
        """(last hidden state [B, S, H], every layer's [layers + 1, B, S, H], 0 = embeddings)."""
        return self.encoder(input_ids, None, None, position_ids, language_ids, deterministic, True)

    def mlm_logits(self, hidden):
        """The LM head on hidden states [..., H] (e.g. gathered at the masked positions)."""
        return self.lm_head(hidden, self.encoder.embeddings)

    def pooled(self, input_ids, *, attention_mask=None, token_type_ids=None):
        """The pooler's output [batch, hidden] (model.pooler must be on)."""
        if not self.config.pooler:
            raise ValueError("this model has no pooler (model.pooler is False)")
        hidden, _ = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.pooler(hidden)


def pool_tokens(states, input_ids, pad_id: int, pooling: str):
    """Sentence vectors [..., B, H] of token states [..., B, S, H]: "mean" over the real tokens
    (not padding), as XTREME's retrieval pools, "first", the `<s>` / [CLS] state, or "inner", the
    mean over the tokens between a row's first (`<s>`) and last (`</s>`) real token. The
    evaluators and the contrastive objectives pool with this, so what is trained is what is scored."""
    if pooling == "first":
        return states[..., 0, :]
    real = input_ids != pad_id
    if pooling == "inner":   # the mean between the row's <s> and </s>, left out (Dufter & Schuetze 2020)
        last = real & ~jnp.concatenate([real[..., 1:], jnp.zeros_like(real[..., :1])], axis=-1)
        real = real & ~last & (jnp.arange(real.shape[-1]) > 0)
    mask = real.astype(states.dtype)[..., None]
    return (states * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1.0)


def bottom_layers_params(model_config, encoder_params: dict, depth: int) -> dict:
    """The encoder's params up to layer `depth`: the embeddings, the first min(depth, k) of the
    model.language_specific_layers = k per-language layers and the first depth - k shared ones
    (a stack left with no layer is left out, as the shorter model has none)."""
    k = model_config.language_specific_layers
    stacks = {"language_layers": min(depth, k), "layers": max(depth - k, 0)}
    kept = {name: value for name, value in encoder_params.items() if name not in stacks}
    for name, layers in stacks.items():
        if layers:
            kept[name] = jax.tree.map(lambda x, layers=layers: x[:layers], encoder_params[name])
    return kept


def truncated(model_config, params, depth: int):
    """(MaskedLM of the bottom `depth` layers, its params): a forward pass that stops at layer
    `depth` costs depth / num_layers of the full one, and its gradient reaches only those layers."""
    if depth >= model_config.num_layers:
        return MaskedLM(model_config), params
    config = copy.deepcopy(model_config)
    config.num_layers = depth
    config.language_specific_layers = min(depth, model_config.language_specific_layers)
    return MaskedLM(config), {**params, "encoder": bottom_layers_params(model_config, params["encoder"], depth)}
