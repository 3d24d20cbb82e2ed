"""Logical-axis rules: how each named model axis is laid out on the mesh.

Parameters and activations name their axes (`batch, length, embed, heads, kv, mlp,
vocab, layers`; `queue`, XLCo's negatives, is split like the batch that fills it); a
preset below maps names to mesh axes (`data, fsdp, tensor`).
Rules are tried in order and a mesh axis is used at most once per array, so an
activation `(batch, length, embed)` keeps `embed` unsharded once `batch` has taken
`fsdp`, while a weight `(embed, mlp)` shards `embed` over `fsdp`.

| logical | dp                     | fsdp             | fsdp_tp          |
|---------|------------------------|------------------|------------------|
| batch   | data, fsdp, tensor     | data, fsdp       | data, fsdp       |
| queue   | data, fsdp, tensor     | data, fsdp       | data, fsdp       |
| embed   | -                      | fsdp             | fsdp             |
| heads   | -                      | -                | tensor           |
| mlp     | -                      | -                | tensor           |
| vocab   | -                      | -                | tensor           |
| others  | -                      | -                | -                |

`dp` replicates every parameter (small models, fastest on few devices); `fsdp`
shards parameters and optimizer state over `fsdp` (ZeRO-3 style); `fsdp_tp` adds
Megatron-style tensor parallelism over `tensor`.
"""
from xlm_jax.errors import ConfigError

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

PRESETS: dict[str, Rules] = {
    "dp": (
        ("batch", ("data", "fsdp", "tensor")),
        ("queue", ("data", "fsdp", "tensor")),
    ),
    "fsdp": (
        ("batch", ("data", "fsdp")),
        ("queue", ("data", "fsdp")),
        ("embed", "fsdp"),
    ),
    "fsdp_tp": (
        ("batch", ("data", "fsdp")),
        ("queue", ("data", "fsdp")),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
    ),
}


def logical_axis_rules(preset: str) -> Rules:
    """The rule table of `mesh.rules`; unnamed logical axes stay replicated."""
    if preset not in PRESETS:
        raise ConfigError(f"config field `mesh.rules`: got {preset!r}; allowed values: {', '.join(PRESETS)}")
    return PRESETS[preset]
