"""Model FLOPs per token: the count behind MFU and the plan's roofline.

FLOPs per trained token (forward + backward = 3x forward; a matmul of an m x n
weight costs 2mn per token forward):

    6 * N_body                 every non-embedding encoder weight, at every position
  + 12 * L * S * H             attention scores and weighted sum (QK^T and PV: 2*2*S*H
                               per layer forward), full bidirectional attention
  + 6 * m * (H*H + H*V)        LM head (dense + tied decoder) at the masked fraction m only

Embedding lookups, LayerNorms, softmax and the optimizer are not counted: MFU
measures the matmul work the model needs, not the work an implementation does. So a
language-specific layer (model.language_specific_layers) counts once per token, for the
token's own language's copy: the encoder runs every copy on every token and keeps one,
and that num_languages x redundancy lowers MFU rather than inflating it (as MoE MFU
counts a token's active experts only). Parameter counts (body_params) include every copy.
"""


def layer_params(model_config) -> int:
    """Weights and biases of one transformer block."""
    h, f = model_config.hidden_size, model_config.mlp_dim
    attention = 4 * h * h + 4 * h
    mlp = 2 * h * f + f + h
    layer_norms = 2 * 2 * h
    return attention + mlp + layer_norms


def layer_copies(model_config, num_layers: int | None = None) -> int:
    """Blocks held by all layers, or by the bottom `num_layers`: a language-specific one
    (the bottom model.language_specific_layers) holds model.num_languages."""
    layers = model_config.num_layers if num_layers is None else num_layers
    specific = min(layers, model_config.language_specific_layers)
    return layers - specific + specific * model_config.num_languages


def body_params(model_config, num_layers: int | None = None) -> int:
    """Non-embedding encoder parameters (weights and biases of the transformer blocks) of all
    layers, or of the bottom `num_layers`, every language's copy included."""
    return layer_copies(model_config, num_layers) * layer_params(model_config)


def forward_flops_per_token(model_config, seq_len: int, masked_fraction: float = 0.0,
                            num_layers: int | None = None) -> float:
    """Forward FLOPs per token of the bottom `num_layers` (default all), with the LM head at a
    `masked_fraction` of the tokens: a third of the module docstring's training formula (one
    block per layer: a token needs only its own language's copy)."""
    h, v = model_config.hidden_size, model_config.vocab_size
    layers = model_config.num_layers if num_layers is None else num_layers
    return (2 * layers * layer_params(model_config) + 4 * layers * seq_len * h
            + 2 * masked_fraction * (h * h + h * v))


def flops_per_token(model_config, seq_len: int, masked_fraction: float) -> float:
    """Training FLOPs per token by the formula in the module docstring."""
    return 3 * forward_flops_per_token(model_config, seq_len, masked_fraction)
