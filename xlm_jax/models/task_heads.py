"""Fine-tuning models: the encoder with a sentence-level or a token-level classifier.

Both keep the encoder's parameters under `"encoder"`, laid out exactly as in MaskedLM,
so a pretrained `params["encoder"]` drops in unchanged; the new weights live under
`"head"`. Every parameter names its logical axes, like the rest of the model; only a
kernel's input dim is sharded (`embed`), the small label dim stays replicated.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models.dropout import Dropout
from xlm_jax.models.encoder import Encoder, dense_init, over_tokens, param_with_axes


def _dense(config, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
                    kernel_init=param_with_axes(dense_init(config), ("embed", None)),
                    bias_init=param_with_axes(nn.initializers.zeros, (None,)), name=name)


class ClassificationHead(nn.Module):
    """transformers' RobertaClassificationHead: dropout, dense + tanh, dropout, out_proj.

    Reads the first token's (<s>) state; the dropout rate is the model's hidden dropout,
    as in transformers when `classifier_dropout` is unset.
    """
    config: Any
    num_labels: int

    @nn.compact
    def __call__(self, first_token: jax.Array, deterministic: bool) -> jax.Array:
        x = Dropout(self.config.dropout_rate)(first_token, deterministic=deterministic)
        x = jnp.tanh(_dense(self.config, self.config.hidden_size, "dense")(x))
        x = Dropout(self.config.dropout_rate)(x, deterministic=deterministic)
        return _dense(self.config, self.num_labels, "out_proj")(x).astype(jnp.float32)


class TokenHead(nn.Module):
    """transformers' XLMRobertaForTokenClassification head: dropout, then one dense per token."""
    config: Any
    num_labels: int

    @nn.compact
    def __call__(self, hidden: jax.Array, deterministic: bool) -> jax.Array:
        x = Dropout(self.config.dropout_rate)(hidden, deterministic=deterministic)
        logits = over_tokens(_dense(self.config, self.num_labels, "out_proj"), x)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", None))


class _EncoderWithHead(nn.Module):
    """Encoder + `head_class`; logits in float32 ([B, labels] or [B, S, labels])."""
    config: Any
    num_labels: int

    def setup(self):
        self.encoder = Encoder(self.config)
        self.head = self.head_class(self.config, self.num_labels)

    def __call__(self, input_ids, attention_mask=None, language_ids=None, deterministic=True):
        hidden, _ = self.encoder(input_ids, attention_mask, language_ids=language_ids,
                                 deterministic=deterministic)
        return self.head(self.head_input(hidden), deterministic)


class SequenceClassifier(_EncoderWithHead):
    """One label per sequence, from the first token (<s>): XNLI as XLM-R fine-tunes it."""
    head_class = ClassificationHead

    @staticmethod
    def head_input(hidden):
        return hidden[:, 0]


class TokenClassifier(_EncoderWithHead):
    """One label per token (POS, NER); which tokens carry a label is the data's business."""
    head_class = TokenHead

    @staticmethod
    def head_input(hidden):
        return hidden
