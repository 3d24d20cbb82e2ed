"""Masked-LM loss at the gathered prediction slots."""
import jax
import jax.numpy as jnp
import optax


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
