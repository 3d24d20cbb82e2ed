"""Scaled dot-product self-attention over [batch, length, heads, head_dim], by `model.attention`.

- "xla" (default, any backend): einsum, float32 softmax, einsum. The only path with attention
  dropout, which needs the probabilities materialized. jax.nn.dot_product_attention's own "xla"
  implementation computes the same thing but not bit for bit (it vmaps over head groups), so
  this path keeps the explicit einsums and with them every recorded number.
- "cudnn" (NVIDIA GPUs): jax.nn.dot_product_attention(implementation="cudnn"), cuDNN's flash
  attention. bfloat16 inputs, head_dim a multiple of 8 up to 128 (256 on Hopper).
- "splash" (TPU): Pallas splash attention, a flash kernel (the [length, length] scores live only
  as tiles in VMEM), run per device under jax.shard_map over the mesh axes that shard `batch`
  and `heads`. Lengths are padded to a multiple of 128 inside.

Neither kernel has attention dropout (cuDNN's has its own RNG, which jax.nn does not expose and
which would not draw our masks), so config.validate refuses model.attention_dropout_rate > 0
with them: set it to 0, as recent recipes do, or keep attention="xla".

Padding: "xla" adds a large negative bias on padded keys. cuDNN gets each row's key length
(the number of real tokens), so it assumes what every xlm_jax batch is: real tokens first,
padding after. Splash gets segment ids (real token 1, padding 0), so real queries see exactly
the real keys; a padded query sees only padded keys, which changes only the hidden states at
padded positions, and those never reach a real token or a loss.
"""
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention

from xlm_jax.config import check_attention_dropout

SPLASH_BLOCK = 512         # the largest splash tile tried; tiles must divide the (padded) length
SPLASH_LENGTH_MULTIPLE = 128   # splash tiles are multiples of the TPU's 128 lanes


def attend(config, query, key, value, attention_mask, dropout: Callable[[jax.Array], jax.Array]):
    """Context vectors [batch, length, heads, head_dim] by `config.attention` (a model config).

    `attention_mask` is [batch, length], True at real tokens; `dropout` is applied to the
    attention probabilities (the "xla" path only; the kernels refuse a nonzero rate).
    """
    if config.attention == "xla":
        return xla_attention(query, key, value, attention_mask, dropout)
    check_attention_dropout(config)
    if config.attention == "cudnn":
        return cudnn_attention(query, key, value, attention_mask)
    return splash_attention_on_mesh(query, key, value, attention_mask)


def scaled(query: jax.Array) -> jax.Array:
    """query / sqrt(head_dim), in the query's dtype: softmax(q k^T / sqrt(d)) with q scaled once."""
    return query / jnp.sqrt(query.shape[-1]).astype(query.dtype)


def xla_attention(query, key, value, attention_mask, dropout):
    """softmax(q k^T / sqrt(d) + padding bias) v, the softmax in float32, dropout on the probabilities."""
    attention_bias = jnp.where(attention_mask[:, None, None, :], 0.0,
                               jnp.finfo(jnp.float32).min).astype(jnp.float32)
    scores = jnp.einsum("bqhd,bkhd->bhqk", scaled(query), key, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + attention_bias, axis=-1).astype(query.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", dropout(probs), value)


def key_lengths(attention_mask: jax.Array) -> jax.Array:
    """Real tokens per row (int32, at least 1: a row of padding alone attends to its first key
    instead of to nothing, which would divide by zero)."""
    return jnp.maximum(jnp.sum(attention_mask, axis=-1, dtype=jnp.int32), 1)


def cudnn_attention(query, key, value, attention_mask):
    """cuDNN flash attention, padded keys masked by the per-row key lengths (query lengths stay
    full, so padded queries attend to the real keys, as in the "xla" path)."""
    return jax.nn.dot_product_attention(query, key, value, key_value_seq_lengths=key_lengths(attention_mask),
                                        scale=1 / math.sqrt(query.shape[-1]), implementation="cudnn")


def splash_attention_on_mesh(query, key, value, attention_mask, interpret: bool = False):
    """Splash attention, per device under jax.shard_map when a mesh is in context (the train and
    eval steps set it, xlm_jax.parallel.mesh.on_mesh): batch and heads split as the logical-axis
    rules say, length and head_dim whole, as the kernel needs. `interpret` runs the kernel's
    Pallas interpreter, so it can be tested on CPU."""
    def per_device(query, key, value, attention_mask):
        return splash_attention_local(query, key, value, attention_mask, interpret)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return per_device(query, key, value, attention_mask)
    qkv = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
    mask = nn.logical_to_mesh_axes(("batch", "length"))
    # check_vma=False: the Pallas kernel's outputs carry no varying-axes annotation.
    return jax.shard_map(per_device, mesh=mesh, in_specs=(qkv, qkv, qkv, mask), out_specs=qkv,
                         check_vma=False)(query, key, value, attention_mask)


def splash_attention_local(query, key, value, attention_mask, interpret: bool = False):
    """Splash attention on one device's [batch, length, heads, head_dim] block.

    The length is padded with padding tokens to a multiple of 128 (splash tiles are whole
    lanes); the extra keys are masked like any padding, the extra queries cut off again.
    """
    length = query.shape[1]
    padded = -(-length // SPLASH_LENGTH_MULTIPLE) * SPLASH_LENGTH_MULTIPLE
    if padded != length:
        widen = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
        query, key, value = (jnp.pad(x, widen) for x in (query, key, value))
        attention_mask = jnp.pad(attention_mask, [(0, 0), (0, padded - length)])
    block = math.gcd(padded, SPLASH_BLOCK)
    kernel = splash_attention.make_splash_mha(
        splash_attention.MultiHeadMask([splash_attention.FullMask((padded, padded))] * query.shape[2]),
        block_sizes=splash_attention.BlockSizes(
            block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block, block_kv_dkv=block,
            block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block),
        head_shards=1, q_seq_shards=1, interpret=interpret)
    segments = attention_mask.astype(jnp.int32)
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)   # the kernel's [heads, length, head_dim] per example
    context = jax.vmap(kernel)(heads_major(scaled(query)), heads_major(key), heads_major(value),
                               segment_ids=splash_attention.SegmentIds(segments, segments))
    return heads_major(context)[:, :length]
