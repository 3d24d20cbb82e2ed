"""The vocabulary dimension padded to a multiple that shards evenly.

jax needs every sharded dim of a jit argument to divide by its mesh axes, and true
vocabularies rarely do (XLM-R's 250,002 = 2 x 125,001 stops tensor parallelism at 2).
So the word embeddings (tied to the MLM decoder) and the MLM output bias have
`padded_vocab_size` rows in the model ("the model layout"); the rows past
`model.vocab_size` are zero, never looked up, and masked out of the logits, so they
get no gradient and stay zero. transformers checkpoints and tokenizers keep the true
size: `resize_vocab_rows` converts between the two at import and export.
"""
import numpy as np

# The params with one row (entry) per vocabulary id.
VOCAB_ROW_PARAMS = (("encoder", "embeddings", "word_embeddings", "embedding"), ("lm_head", "bias"))


def round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def padded_vocab_size(model_config) -> int:
    """model.vocab_size rounded up to model.vocab_pad_multiple (1 in configs older than the field)."""
    return round_up(model_config.vocab_size, getattr(model_config, "vocab_pad_multiple", 1))


def vocab_padding_params(model_config) -> int:
    """How many of MaskedLM's parameters are vocabulary padding (embedding rows and bias entries)."""
    return (padded_vocab_size(model_config) - model_config.vocab_size) * (model_config.hidden_size + 1)


def resize_vocab_rows(params: dict, rows: int) -> dict:
    """`params` with every VOCAB_ROW_PARAMS leaf cut or zero-padded to `rows` rows, as host
    numpy arrays; every other leaf (and a missing MLM head) is passed through unchanged."""

    def resize(table):
        table = np.asarray(table)
        if table.shape[0] >= rows:
            return table[:rows]
        return np.pad(table, [(0, rows - table.shape[0])] + [(0, 0)] * (table.ndim - 1))

    def replace(tree, path):
        if path[0] not in tree:
            return tree
        if len(path) == 1:
            return {**tree, path[0]: resize(tree[path[0]])}
        return {**tree, path[0]: replace(tree[path[0]], path[1:])}

    for path in VOCAB_ROW_PARAMS:
        params = replace(params, path)
    return params
