"""Translation-pair classification (Unicoder's cross-lingual paraphrase classification).

A binary head on the first token of `<s> x </s></s> y </s>` decides whether y translates x.
Negatives come from the batch itself: for a `pair_classification.negative_fraction` of the
rows, y is replaced by the target side of another row (row i takes row i + shift's, one
random shift in 1..B-1 per step). The pairs are put together on device over the whole
global batch before microbatching; a "negative" whose y is token for token the row's own
translation (duplicates are common in real corpora) is labelled a positive, so a negative
never equals the positive.

With synthetic pairs (a batch with `pair_weight`, xlm_jax/data/synthetic.py) each joined pair
weighs what its sources are trusted: a kept pair its own weight, one cut from two rows (x from
one, y from the other: every negative) the product of both rows' weights, in the loss sum, the
accuracy and the normalizer alike; weight 1 everywhere gives the unweighted loss.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xlm_jax.data.examples import fair_lengths
from xlm_jax.models import flops as flops_lib
from xlm_jax.models.encoder import param_with_axes
from xlm_jax.objectives.base import Objective, StepContext


def join_pair(x, y, pad_id: int):
    """`<s> x </s>` [B, S] and `<s> y </s>` [B, S] -> `<s> x </s></s> y </s>` [B, S], the two
    sides sharing the S - 4 tokens between the specials (fair_lengths); also the index of the
    first position of the second segment (its leading `</s>`), [B]."""
    seq = x.shape[1]
    body_x = jnp.sum(x != pad_id, axis=1, keepdims=True) - 2          # x without its <s> and </s>
    body_y = jnp.sum(y != pad_id, axis=1, keepdims=True) - 2
    keep_x, keep_y = fair_lengths(body_x, body_y, seq - 4, jnp.where)
    eos = jnp.take_along_axis(x, body_x + 1, axis=1)                   # x's own </s>, whatever the tokenizer
    p = jnp.arange(seq)[None, :]
    second = keep_x + 2                                                # <s> x </s> is keep_x + 2 tokens
    from_x = jnp.take_along_axis(x, jnp.clip(p, 0, seq - 1), axis=1)
    from_y = jnp.take_along_axis(y, jnp.clip(p - second, 0, seq - 1), axis=1)   # y[1] at second + 1
    joined = jnp.where(p <= keep_x, from_x,
                       jnp.where(p <= second, eos,
                                 jnp.where(p <= second + keep_y, from_y,
                                           jnp.where(p == second + keep_y + 1, eos, pad_id))))
    return joined.astype(x.dtype), second[:, 0]


def pair_examples(batch, key, negative_fraction: float, pad_id: int) -> dict:
    """input_ids of the joined pairs, label (1 = y translates x), the second side's language."""
    src, tgt = batch["src_ids"], batch["tgt_ids"]
    rows = src.shape[0]
    negative_key, shift_key = jax.random.split(key)
    shift = jax.random.randint(shift_key, (), 1, max(rows, 2))
    other = (jnp.arange(rows) + shift) % rows
    negative = jax.random.uniform(negative_key, (rows,)) < negative_fraction
    y = jnp.where(negative[:, None], tgt[other], tgt)
    y_language = jnp.where(negative, batch["tgt_language"][other], batch["tgt_language"])
    label = jnp.all(y == tgt, axis=1).astype(jnp.int32)
    input_ids, second = join_pair(src, y, pad_id)
    joined = {"input_ids": input_ids, "label": label, "second_segment": second,
              "src_language": batch["src_language"], "tgt_language": y_language}
    if "pair_weight" in batch:
        weight = batch["pair_weight"]
        joined["pair_weight"] = jnp.where(negative, weight * weight[other], weight)
    return joined


class PairClassifierHead(nn.Module):
    """RoBERTa's classification head: dense -> tanh -> dense(2) on the first token."""
    hidden: int

    @nn.compact
    def __call__(self, first_token):
        init = nn.initializers.normal(0.02)
        h = nn.Dense(self.hidden, param_dtype=jnp.float32, kernel_init=param_with_axes(init, ("embed", None)),
                     bias_init=param_with_axes(nn.initializers.zeros, (None,)), name="dense")(first_token)
        return nn.Dense(2, param_dtype=jnp.float32, kernel_init=param_with_axes(init, (None, None)),
                        bias_init=param_with_axes(nn.initializers.zeros, (None,)), name="out")(jnp.tanh(h))


class TranslationPairClassification(Objective):
    name = "pair_classification"
    stream_kind = "pairs"

    @classmethod
    def check(cls, config):
        fraction = config.pair_classification.negative_fraction
        cls.require(0 < fraction < 1, "negative_fraction", f"got {fraction!r}; must be in (0, 1)")

    def init_head(self, rng):
        hidden = self.config.model.hidden_size
        return PairClassifierHead(hidden).init(rng, jnp.zeros((1, hidden)))["params"]

    def prepare_batch(self, batch, key):
        m = self.config.model
        joined = pair_examples(batch, key, self.options.negative_fraction, m.pad_token_id)
        if m.num_languages:
            positions = jnp.arange(joined["input_ids"].shape[1])[None, :]
            joined["language_ids"] = jnp.where(positions < joined["second_segment"][:, None],
                                               joined["src_language"][:, None], joined["tgt_language"][:, None])
        return joined

    def normalizer(self, batch):
        if "pair_weight" in batch:
            return jnp.sum(batch["pair_weight"])    # > 0: every weight is in (0, 1]
        return jnp.asarray(batch["input_ids"].shape[0], jnp.float32)

    def loss_terms(self, ctx: StepContext, batch, extra):
        hidden, _ = ctx.encode_batch(self.batch_name, batch)
        head = PairClassifierHead(self.config.model.hidden_size)
        logits = head.apply({"params": ctx.params["objectives"][self.name]}, hidden[:, 0].astype(jnp.float32))
        weight = batch.get("pair_weight", jnp.ones(logits.shape[0], jnp.float32))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"loss_sum": jnp.sum(losses * weight), "correct": jnp.sum(correct * weight),
                "positives": jnp.sum(batch["label"] * weight)}, None

    def metrics(self, terms, normalizer, step):
        return {"loss": terms["loss_sum"] / normalizer, "accuracy": terms["correct"] / normalizer,
                "positive_fraction": terms["positives"] / normalizer}

    def flops(self):
        m, seq = self.config.model, self.config.data.seq_len
        head = 6 * self.batch_size * (m.hidden_size * m.hidden_size + 2 * m.hidden_size)
        return {self.name: 3 * flops_lib.forward_flops_per_token(m, seq) * self.tokens_per_step() + head}
