"""AdamW with the fairseq/XLM-R recipe: warmup, linear or polynomial decay, clipping."""
import flax
import jax.numpy as jnp
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then decay to `end_learning_rate` at num_steps
    (linear, polynomial), none (constant), or as 1 / sqrt(step) (inverse_sqrt, XLM)."""
    t = train_config
    if t.schedule == "inverse_sqrt":   # XLM's adam_inverse_sqrt: linear warmup, then lr * sqrt(warmup / step)
        warmup_steps = max(t.warmup_steps, 1)
        return lambda step: t.learning_rate * jnp.where(
            step < warmup_steps, step / warmup_steps, jnp.sqrt(warmup_steps / jnp.maximum(step, 1)))
    warmup = optax.linear_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1))
    decay_steps = max(t.num_steps - t.warmup_steps, 1)
    if t.schedule == "constant":
        decay = optax.constant_schedule(t.learning_rate)
    else:
        power = 1.0 if t.schedule == "linear" else t.power
        decay = optax.polynomial_schedule(t.learning_rate, t.end_learning_rate, power, decay_steps)
    if t.warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [t.warmup_steps])


def weight_decay_mask(params):
    """Decay matrices and embeddings; never biases or LayerNorm scales (BERT/HF convention).

    Nor the pooler: MLM gives it no gradient, so decoupled decay alone would shrink it.
    """
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {path: path[-1] not in ("bias", "scale") and path[0] != "pooler" for path in flat})


def make_optimizer(train_config) -> optax.GradientTransformation:
    t = train_config
    adamw = optax.adamw(learning_rate_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps,
                        weight_decay=t.weight_decay, mask=weight_decay_mask)
    if t.clip_norm:
        return optax.chain(optax.clip_by_global_norm(t.clip_norm), adamw)
    return adamw
