"""Will the train step fit this machine's devices? A lower bound, in milliseconds, before any work.

A run on devices too small for its config used to read and pack the whole corpus, then
compile for minutes, then fail in XLA's allocator. This bound is computed from shapes
alone (no compile, no data): the exact per-device bytes of the sharded train state
(params, optimizer moments, objective state) and of one set of gradients, plus the
activations the backward pass must keep for one microbatch, counted low (only what the
remat policy saves, every part divided by the tensor axis). A run whose bound exceeds the
device memory cannot fit and stops at once with `--mode=plan`'s advice; one under it may
still not fit, which only the compiled plan can say.
"""
import math
import os

import jax
import numpy as np

from xlm_jax.data.streams import batch_spec
from xlm_jax.errors import ConfigError
from xlm_jax.models.flops import layer_copies
from xlm_jax.objectives.registry import streams
from xlm_jax.parallel.mesh import batch_shards
from xlm_jax.plan.targets import GiB

# Activations kept per token per layer for the backward pass, in hidden-size (H) and MLP-size
# (F) units, and attention rows (one per head, S wide); see models/encoder.py.
_SAVED_PER_LAYER = {
    "none": (8, 2, 2),                                # q k v, attention out, 2 LayerNorms...; MLP in and
                                                      # GELU; scores and probabilities
    "dots_saveable": (5, 1, 1),                       # every matmul output, the scores included
    "dots_with_no_batch_dims_saveable": (5, 1, 0),    # the weight matmuls' outputs
    "full": (1, 0, 0),                                # each layer's input
}


_TOKEN_FIELDS = ("input_ids", "src_ids", "tgt_ids")   # the encoded sequences of a batch (data/streams.py)


def device_capacity(local_devices) -> float:
    """Bytes one of this process' devices may use: the backend's limit, or for CPU devices the
    RAM they share."""
    stats = local_devices[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return float(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / len(local_devices)


def _sharded_bytes(abstract_tree, shardings) -> int:
    leaves = zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings))
    return sum(math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize for a, s in leaves)


def memory_lower_bound(config, objectives, abstract_state, shardings, mesh, rules) -> dict:
    """{"state", "gradients", "activations", "total"}: bytes per device, each counted low."""
    m, t, d = config.model, config.train, config.data
    state = _sharded_bytes(abstract_state, shardings)
    gradients = _sharded_bytes(abstract_state.params, shardings.params)
    tensor = mesh.shape.get("tensor", 1)
    width = {"float32": 4, "bfloat16": 2}[m.dtype]
    hidden_units, mlp_units, attention_rows = _SAVED_PER_LAYER[m.remat]
    # Every language's copy of a language-specific layer runs on every token and keeps its own.
    per_token = (hidden_units * m.hidden_size + mlp_units * m.mlp_dim
                 + attention_rows * m.num_heads * d.seq_len) * width * layer_copies(m)
    activations = 0
    # Per batch the pipeline feeds, as its fields declare it (objectives that share a batch share
    # its forward pass): every batch is live in the same microbatch.
    for fields in batch_spec(streams(objectives), config).values():
        rows = fields["input_ids" if "input_ids" in fields else "src_ids"][0][0]
        rows = rows // t.grad_accum_steps // batch_shards(mesh, rules)
        tokens = sum(fields[name][0][1] for name in _TOKEN_FIELDS if name in fields)
        activations += rows * tokens * per_token // tensor
        if "masked_positions" in fields:   # the f32 logits of its prediction slots
            activations += rows * fields["masked_positions"][0][1] * m.vocab_size * 4 // tensor
    total = state + gradients + activations
    return {"state": state, "gradients": gradients, "activations": activations, "total": total}


def check_fits(config, objectives, abstract_state, shardings, mesh, rules) -> None:
    """ConfigError when even the lower bound exceeds a device's memory (train.check_memory=False skips)."""
    if not config.train.check_memory:
        return
    bound = memory_lower_bound(config, objectives, abstract_state, shardings, mesh, rules)
    capacity = device_capacity(jax.local_devices())
    if bound["total"] <= capacity:
        return
    tips = advice(config, {"peak": bound["total"], "capacity": capacity, "arguments": bound["state"],
                           "temporaries": bound["activations"]}, jax.device_count())
    raise ConfigError(
        f"config field `train.batch_size`: this step cannot fit: it needs at least "
        f"{bound['total'] / GiB:.1f} GiB per device (state {bound['state'] / GiB:.1f}, gradients "
        f"{bound['gradients'] / GiB:.1f}, activations of one microbatch {bound['activations'] / GiB:.1f}) "
        f"and a device here has {capacity / GiB:.1f} GiB ({jax.device_count()} x "
        f"{jax.devices()[0].device_kind}). Try " + "; or ".join(tips)
        + ". `--mode=plan` compiles the step and gives the exact figure; --config.train.check_memory=False "
        "skips this check")


def advice(config, memory: dict, num_devices: int) -> list[str]:
    """What would bring a step that does not fit under the chip's memory, most effective first."""
    t, m = config.train, config.model
    over = memory["peak"] - memory["capacity"]
    tips = []
    state = memory["arguments"]
    if state > memory["capacity"] and config.mesh.rules == "dp":
        tips.append("--config.mesh.rules=fsdp --config.mesh.data=1 --config.mesh.fsdp=-1 (shard params and "
                    "optimizer state over the devices instead of replicating them)")
    if memory["temporaries"] > over:
        needed = math.ceil(t.grad_accum_steps * memory["temporaries"] / max(memory["temporaries"] - over, 1))
        micro_sizes = [a for a in range(needed, t.batch_size + 1) if t.batch_size % a == 0]
        if micro_sizes:
            tips.append(f"--config.train.grad_accum_steps={micro_sizes[0]} (temporaries scale with the "
                        f"sequences per microbatch; now {t.grad_accum_steps})")
    if m.remat != "full":
        lighter = "dots_with_no_batch_dims_saveable (or full)" if m.remat == "none" else "full"
        tips.append(f"--config.model.remat={lighter}: keep fewer activations for the backward pass")
    if config.mesh.rules != "fsdp_tp" and m.num_heads % 2 == 0:
        tips.append("--config.mesh.rules=fsdp_tp --config.mesh.tensor=2 (split heads, MLP and vocabulary too)")
    tips.append(f"more devices than {num_devices}, or a chip with more memory")
    return tips
