"""Masked LM on monolingual blocks (XLM-R's MMLM) and on translation pairs (XLM's TLM).

Both predict the masked tokens of one sequence with the LM head, run only at the gathered
prediction slots; TLM's sequence is a pair `<s> src </s></s> tgt </s>` masked over both
sides, so a masked word can be read off its translation (data/streams.py builds it, with
XLM's reset or InfoXLM's continuous positions and per-side language ids). A TLM batch with
`pair_weight` (synthetic pairs, xlm_jax/data/synthetic.py) weights each row's slots by it, in
the loss sum and the normalizer alike.
"""
import jax
import jax.numpy as jnp
import optax

from xlm_jax.data.streams import StreamSpec
from xlm_jax.models import flops as flops_lib
from xlm_jax.models.masked_lm import gather_positions
from xlm_jax.objectives.base import Objective, StepContext



def mlm_loss_terms(logits: jax.Array, masked_ids: jax.Array, masked_weights: jax.Array) -> dict:
    """Sums, not means, so microbatches and hosts add up to the exact global average.

    logits [B, P, V]; masked_ids [B, P]; masked_weights [B, P] (0 marks an empty slot).
    Returns loss_sum, correct (weighted count of argmax hits) and count (real slots).
    """
    logits = logits.astype(jnp.float32)
    per_slot = optax.softmax_cross_entropy_with_integer_labels(logits, masked_ids)
    hits = (jnp.argmax(logits, axis=-1) == masked_ids).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(per_slot * masked_weights),
        "correct": jnp.sum(hits * masked_weights),
        "count": jnp.sum(masked_weights),
    }


class MaskedLanguageModel(Objective):
    """XLM-R's multilingual masked LM on packed monolingual blocks; normalized by masked tokens."""
    name = "mlm"
    stream_kind = "blocks"

    def normalizer(self, batch):
        return jnp.maximum(jnp.sum(batch["masked_weights"]), 1.0)

    def loss_terms(self, ctx: StepContext, batch, extra):
        hidden, _ = ctx.encode_batch(self.batch_name, batch)
        logits = ctx.mlm_logits(gather_positions(hidden, batch["masked_positions"]))
        return mlm_loss_terms(logits, batch["masked_ids"], batch["masked_weights"]), None

    def metrics(self, terms, normalizer, step):
        return {"loss": terms["loss_sum"] / normalizer, "accuracy": terms["correct"] / normalizer,
                "masked_tokens": terms["count"]}

    def flops(self):
        d = self.config.data
        per_token = 3 * flops_lib.forward_flops_per_token(self.config.model, d.seq_len, d.mask_prob)
        return {self.name: per_token * self.tokens_per_step()}


class TranslationLanguageModel(MaskedLanguageModel):
    """XLM's TLM: masked LM over a translation pair as one sequence (positions: `tlm.positions`)."""
    name = "tlm"
    stream_kind = "tlm"

    def stream(self):
        return StreamSpec(self.batch_name, self.stream_kind, self.batch_size, positions=self.options.positions)

    def normalizer(self, batch):
        if "pair_weight" not in batch:
            return super().normalizer(batch)
        total = jnp.sum(slot_weights(batch))
        return jnp.where(total > 0, total, 1.0)   # as MLM's max(count, 1): slot weights may sum below 1

    def loss_terms(self, ctx: StepContext, batch, extra):
        if "pair_weight" not in batch:
            return super().loss_terms(ctx, batch, extra)
        hidden, _ = ctx.encode_batch(self.batch_name, batch)
        logits = ctx.mlm_logits(gather_positions(hidden, batch["masked_positions"]))
        terms = mlm_loss_terms(logits, batch["masked_ids"], slot_weights(batch))
        terms["count"] = jnp.sum(batch["masked_weights"])   # masked_tokens: a count, whatever the weights
        return terms, None


def slot_weights(batch) -> jax.Array:
    """[B, P]: each prediction slot's weight, masked_weights times its row's pair_weight."""
    return batch["masked_weights"] * batch["pair_weight"][:, None]
