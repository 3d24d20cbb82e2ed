"""model.attention: "xla" against float64 numpy and the attention it replaced, splash (in Pallas'
interpreter) against numpy on an 8-device mesh, and both fused kernels compiled for their chips."""
import os

# Before jax starts its backends (collection imports this before any test runs): without a CUDA
# installation, jax's CUDA plugin only registers, for compile-only devices, with its version
# checks off.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

import importlib.util   # noqa: E402

import flax.linen as nn   # noqa: E402
import jax   # noqa: E402
import jax.numpy as jnp   # noqa: E402
import numpy as np   # noqa: E402
import pytest   # noqa: E402
from jax.sharding import NamedSharding   # noqa: E402

from tests.helpers import param_shapes, random_ids, tiny_config   # noqa: E402
from xlm_jax.modes.prepare import validate   # noqa: E402
from xlm_jax.errors import ConfigError   # noqa: E402
from xlm_jax.models import attention   # noqa: E402
from xlm_jax.models.dropout import Dropout   # noqa: E402
from xlm_jax.models.encoder import ProjectionWeights, SelfAttention, over_tokens   # noqa: E402
from xlm_jax.models.masked_lm import MaskedLM   # noqa: E402
from xlm_jax.parallel.mesh import batch_sharding, make_mesh, on_mesh   # noqa: E402
from xlm_jax.parallel.rules import logical_axis_rules   # noqa: E402

B, T, N, D = 4, 12, 2, 8


def np_attention(q, k, v, mask, out_grad, keep=None, rate=0.0):
    """float64 attention and its gradients, written out by hand.

    O = (P * K) V with P = softmax(q k^T / sqrt(d)) over the real keys and K = keep / (1 - rate)
    (dropout on the probabilities); returns O and d(sum(O * out_grad)) / d(q, k, v).
    """
    q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, out_grad))
    scale = 1 / np.sqrt(q.shape[-1])
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = np.where(np.asarray(mask)[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    kept = np.ones_like(p) if keep is None else np.asarray(keep, np.float64) / (1 - rate)
    a = p * kept
    out = np.einsum("bhqk,bkhd->bqhd", a, v)
    d_v = np.einsum("bhqk,bqhd->bkhd", a, g)
    d_p = np.einsum("bqhd,bkhd->bhqk", g, v) * kept
    d_s = p * (d_p - (d_p * p).sum(-1, keepdims=True))
    d_q = np.einsum("bhqk,bkhd->bqhd", d_s, k) * scale
    d_k = np.einsum("bhqk,bqhd->bkhd", d_s, q) * scale
    return out, (d_q, d_k, d_v)


def random_qkv(seed, shape=(B, T, N, D), dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape), dtype) for _ in range(4)]   # q, k, v, out_grad


def padding_mask(batch, length):
    """Row r has length - 3 * r real tokens, then padding (at least one real token per row)."""
    return np.arange(length)[None, :] < np.maximum(length - 3 * np.arange(batch), 1)[:, None]


def test_xla_attention_and_its_gradients_match_numpy_with_padding_and_dropout():
    q, k, v, g = random_qkv(0)
    mask = padding_mask(B, T)
    rate = 0.25
    keep = np.random.default_rng(1).random((B, N, T, T)) >= rate
    dropout = lambda probs: jnp.where(keep, probs / (1 - rate), 0.0)

    def loss(q, k, v):
        return jnp.sum(attention.xla_attention(q, k, v, jnp.asarray(mask), dropout) * g)

    out = attention.xla_attention(q, k, v, jnp.asarray(mask), dropout)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    expected_out, expected_grads = np_attention(q, k, v, mask, g, keep, rate)
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class SelfAttentionBefore(nn.Module):
    """SelfAttention as it was before model.attention (commit 1ef3a14), verbatim but for the name."""
    config: object

    @nn.compact
    def __call__(self, x, attention_bias, deterministic):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        head_dim = c.hidden_size // c.num_heads
        axes = ("batch", "length", "heads", "kv")
        weights = [ProjectionWeights(c, ("embed", "heads", "kv"), ("heads", "kv"), name=name)()
                   for name in ("query", "key", "value")]
        kernel = jnp.stack([kernel for kernel, _ in weights], axis=1)
        bias = jnp.stack([bias for _, bias in weights])
        qkv = over_tokens(lambda t: jnp.einsum("td,dchk->tchk", t, kernel), x.astype(dtype)) + bias
        query, key, value = (nn.with_logical_constraint(qkv[:, :, i], axes) for i in range(3))

        query = query / jnp.sqrt(head_dim).astype(dtype)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores + attention_bias, axis=-1).astype(dtype)
        probs = Dropout(c.attention_dropout_rate)(probs, deterministic=deterministic)
        context = nn.with_logical_constraint(jnp.einsum("bhqk,bkhd->bqhd", probs, value), axes)
        kernel, bias = ProjectionWeights(c, ("heads", "kv", "embed"), ("embed",), name="output")()
        tokens = context.reshape(*context.shape[:2], c.hidden_size)
        return over_tokens(lambda t: t @ kernel.reshape(c.hidden_size, -1), tokens) + bias


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xla_attention_is_bit_identical_to_the_attention_before_it_with_dropout_active(dtype):
    """Same outputs, same dropout masks, same gradients, to the bit: recorded numbers stay."""
    config = tiny_config(hidden_size=32, num_heads=4, dropout=0.1)
    config.model.dtype = dtype
    mask = jnp.asarray(padding_mask(B, T))
    bias = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, 32)), jnp.float32)
    now, before = SelfAttention(config.model), SelfAttentionBefore(config.model)
    params = now.init(jax.random.key(0), x, mask, True)
    rngs = {"dropout": jax.random.key(3)}

    def run(module, padding):
        def loss(params, x):
            out = module.apply(params, x, padding, False, rngs=rngs)
            return jnp.sum(out.astype(jnp.float32) ** 2), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
        return out, grads

    out_now, grads_now = run(now, mask)
    out_before, grads_before = run(before, bias)
    no_dropout = now.apply(params, x, mask, True)
    assert not np.array_equal(out_now, no_dropout)   # dropout really was active
    np.testing.assert_array_equal(out_now, out_before)
    for got, want in zip(jax.tree.leaves(grads_now), jax.tree.leaves(grads_before)):
        np.testing.assert_array_equal(got, want)


def test_splash_attention_matches_numpy_per_device_on_an_8_device_mesh():
    """Interpreted on CPU, sharded over batch (data x fsdp) and heads (tensor); a length of 40 is
    padded to the kernel's 128. Real queries match numpy; padded keys get no gradient."""
    length = 40
    q, k, v, g = random_qkv(4, (B, length, N, 16))
    mask = padding_mask(B, length)
    real_queries = jnp.asarray(mask, jnp.float32)[:, :, None, None]
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = logical_axis_rules("fsdp_tp")

    def loss(q, k, v, mask):
        out = attention.splash_attention_on_mesh(q, k, v, mask, interpret=True)
        return jnp.sum(out * g * real_queries), out

    # The step's own shardings (a jit knows its devices only from them): batch and heads split.
    qkv = NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"), rules))
    rows = batch_sharding(mesh, rules)
    step = jax.jit(on_mesh(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), mesh, rules),
                   in_shardings=(qkv, qkv, qkv, rows))
    lowered = step.lower(q, k, v, jnp.asarray(mask))
    assert "sdy.manual_computation" in lowered.as_text()   # it ran per device under shard_map
    (_, out), grads = lowered.compile()(q, k, v, jnp.asarray(mask))
    expected_out, expected_grads = np_attention(q, k, v, mask, g * real_queries)
    np.testing.assert_allclose(out * real_queries, expected_out * real_queries, rtol=2e-5, atol=2e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    padded_keys = ~mask[:, :, None, None]
    assert np.all(np.asarray(grads[1]) * padded_keys == 0) and np.all(np.asarray(grads[2]) * padded_keys == 0)


def test_key_lengths_count_real_tokens_and_give_a_row_of_padding_one_key():
    mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(attention.key_lengths(mask), [2, 4, 1])


@pytest.mark.parametrize("overrides, field, advice", [
    ({"attention": "flash"}, "model.attention", "allowed values: xla, cudnn, splash"),
    ({"attention": "splash", "attention_dropout_rate": 0.1}, "model.attention_dropout_rate",
     "attention_dropout_rate=0"),
    ({"attention": "cudnn", "dtype": "bfloat16", "attention_dropout_rate": 0.1}, "model.attention_dropout_rate",
     "model.attention=xla"),
    ({"attention": "cudnn", "dtype": "float32"}, "model.dtype", "model.dtype=bfloat16"),
    ({"attention": "cudnn", "dtype": "bfloat16", "hidden_size": 36, "num_heads": 3}, "model.num_heads",
     "multiple of 8"),
])
def test_attention_configs_the_kernels_cannot_run_name_the_field_and_the_fix(overrides, field, advice):
    config = tiny_config()
    for name, value in overrides.items():
        config.model[name] = value
    with pytest.raises(ConfigError, match=f"`{field}`") as error:
        validate(config)
    assert advice in str(error.value)


def test_a_kernel_refuses_attention_dropout_where_the_config_was_never_validated():
    config = tiny_config()
    config.model.attention, config.model.attention_dropout_rate = "splash", 0.1
    x = jnp.zeros((B, T, 32), jnp.float32)
    with pytest.raises(ConfigError, match="`model.attention_dropout_rate`"):
        jax.eval_shape(lambda: SelfAttention(config.model).init(jax.random.key(0), x, jnp.ones((B, T), bool), True))


# --- the fused kernels, compiled for their chips on compile-only devices (xlm_jax/plan/targets.py) -----

def _require_compiler(module: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:   # a submodule of a package that is absent (no jax_plugins at all)
        found = False
    if not found:
        pytest.skip(f"{module} is not installed: pip install -e '.[tpu]' / '.[plan]' to compile for this chip")


def compiled_train_gradient(config, devices):
    """HLO text of jax.grad(sum of the MLM logits) w.r.t. the params, compiled for `devices`."""
    mesh = make_mesh(config.mesh, devices)
    rules = logical_axis_rules(config.mesh.rules)
    boxed = param_shapes(config)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
    ids = random_ids(np.random.default_rng(0), config.train.batch_size, config.data.seq_len,
                     config.model.vocab_size, lengths=[config.data.seq_len - 5] * config.train.batch_size)
    rows = jax.ShapeDtypeStruct(ids.shape, ids.dtype, sharding=batch_sharding(mesh, rules))
    model = MaskedLM(config.model)
    loss = lambda params, ids: jnp.sum(model.apply({"params": params}, ids).astype(jnp.float32))
    step = jax.jit(on_mesh(jax.grad(loss), mesh, rules), in_shardings=(shardings, rows.sharding))
    return step.lower(params, rows).compile().as_text()


def custom_call_targets(hlo: str) -> set:
    return {line.split('custom_call_target="')[1].split('"')[0]
            for line in hlo.splitlines() if 'custom_call_target="' in line}


def kernel_config(attention_kind, seq_len, **mesh):
    config = tiny_config(hidden_size=64, num_heads=2, mlp_dim=128, vocab_size=300, max_len=seq_len,
                         seq_len=seq_len, batch_size=4)
    config.model.attention = attention_kind
    config.model.dtype = "bfloat16"
    config.mesh.rules = "fsdp_tp"
    for axis, size in mesh.items():
        config.mesh[axis] = size
    return validate(config)


def test_splash_attention_compiles_for_a_tpu_v5p_slice_forward_and_backward(monkeypatch):
    _require_compiler("libtpu")
    # libtpu's lockfile would stop it while another process compiles for a TPU. Scoped to this
    # test: a multi-process run started later (tests/train/test_loop.py) must not inherit it.
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from xlm_jax.plan.targets import parse_target
    config = kernel_config("splash", 128, data=2, fsdp=1, tensor=2)   # batch over data, heads over tensor
    hlo = compiled_train_gradient(config, parse_target("v5p-8").devices())
    assert "tpu_custom_call" in custom_call_targets(hlo)
    for phase in ("fwd", "dq", "dkv"):   # the Mosaic kernels of the forward pass and of both gradients
        assert f"splash_mha_{phase}_segmented" in hlo


def test_cudnn_attention_compiles_for_two_h100s_forward_and_backward(monkeypatch):
    _require_compiler("jax_plugins.xla_cuda12")
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_fmha
    from xlm_jax.plan.targets import parse_target
    try:
        cudnn_fmha.check_cudnn_version()
    except RuntimeError:   # no local cuDNN library: compile for the target's cuDNN 9.10 (its description)
        monkeypatch.setattr(cudnn_fmha, "check_cudnn_version", lambda: 91000)
    config = kernel_config("cudnn", 32, data=1, fsdp=1, tensor=2)   # heads over the two GPUs
    hlo = compiled_train_gradient(config, parse_target("2xH100").devices())
    targets = custom_call_targets(hlo)
    assert {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"} <= targets   # padding as lengths, no bias
    assert not any("Bias" in t or "Dropout" in t for t in targets)
