"""The jitted train and eval steps: pure functions of (state, batch)."""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.objectives.mlm import mlm_loss_terms
from xlm_jax.parallel.mesh import on_mesh
from xlm_jax.train.optim import learning_rate_schedule
from xlm_jax.train.state import TrainState


def _model_kwargs(batch):
    return {"language_ids": batch["language_ids"]} if "language_ids" in batch else {}


def _microbatches(batch, num_micro: int, mesh, rules):
    """[B, ...] -> [A, B/A, ...] with microbatch k = examples k, k+A, ... .

    Interleaving keeps every device's rows local: a device holding a contiguous
    slice of the batch holds the same share of every microbatch.
    """
    batch_axes = dict(rules).get("batch")

    def split(x):
        x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, batch_axes, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(split, batch)


def make_train_step(model, optimizer: optax.GradientTransformation, config, mesh, rules,
                    state_shardings, batch_sharding):
    """Returns step(state, batch) -> (state, metrics), jitted with shardings, state donated.

    One call is one optimizer update over `train.grad_accum_steps` microbatches. The
    loss is the mean over every masked token of the global batch, however it is split.
    A non-finite loss or gradient leaves params and optimizer state untouched and is
    reported in metrics["nonfinite"]; the loop decides whether that stops the run.
    """
    num_micro = config.train.grad_accum_steps
    schedule_fn = learning_rate_schedule(config.train)
    dropout_key = jax.random.key(config.train.seed + 1)

    def micro_grads(params, micro, rng):
        def loss_fn(p):
            logits = model.apply({"params": p}, micro["input_ids"], micro["masked_positions"],
                                 deterministic=False, rngs={"dropout": rng}, **_model_kwargs(micro))
            terms = mlm_loss_terms(logits, micro["masked_ids"], micro["masked_weights"])
            return terms["loss_sum"], terms

        grads, terms = jax.grad(loss_fn, has_aux=True)(params)
        return grads, terms

    def accumulated_grads(params, batch, rng):
        """Summed grads and loss terms over the microbatches of one global batch."""
        if num_micro == 1:
            return micro_grads(params, batch, rng)

        def accumulate(carry, xs):
            index, mb = xs
            grads, terms = micro_grads(params, mb, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, carry, (grads, terms)), None

        zeros = (jax.tree.map(jnp.zeros_like, params),
                 {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")})
        micro = _microbatches(batch, num_micro, mesh, rules)
        (grads, terms), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_micro), micro))
        return grads, terms

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(dropout_key, state.step)
        grads, terms = accumulated_grads(state.params, batch, rng)
        count = jnp.maximum(terms["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = terms["loss_sum"] / count
        grad_norm = optax.tree.norm(grads)

        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(params, opt_state):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        new_params, new_opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o),
                                                 state.params, state.opt_state)
        new_state = TrainState(step=state.step + 1, params=new_params, opt_state=new_opt_state)
        metrics = {"loss": loss, "accuracy": terms["correct"] / count, "grad_norm": grad_norm,
                   "learning_rate": schedule_fn(state.step), "masked_tokens": terms["count"],
                   "nonfinite": (~finite).astype(jnp.int32)}
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(on_mesh(step, mesh, rules), in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def make_eval_step(model, mesh, rules, params_shardings, batch_sharding):
    """eval(params, batch) -> loss_sum, correct, count over the batch (no dropout)."""

    def evaluate(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"], batch["masked_positions"],
                             deterministic=True, **_model_kwargs(batch))
        return mlm_loss_terms(logits, batch["masked_ids"], batch["masked_weights"])

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(on_mesh(evaluate, mesh, rules), in_shardings=(params_shardings, batch_sharding),
                   out_shardings=replicated)
