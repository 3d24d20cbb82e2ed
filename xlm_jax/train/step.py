"""The jitted train step: a pure function of (state, batches).

Nothing here names an objective: the step sums the weighted losses of whichever objectives
(xlm_jax/objectives) read the batches it is given, so the "alternate" schedule, which
feeds one objective's batch per update, compiles one step per batch name.
"""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.objectives.base import StepContext
from xlm_jax.parallel.mesh import on_mesh
from xlm_jax.train.optim import learning_rate_schedule
from xlm_jax.train.state import TrainState


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


def _joined(stacked):
    """The inverse of _microbatches: [A, B/A, ...] -> [B, ...] in the batch's own row order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape((-1,) + x.shape[2:]), stacked)


def _heads_of(params, names):
    """A params-shaped tree of Python bools: True on params["objectives"][name] for `names`."""
    mask = jax.tree.map(lambda _: False, params)
    if "objectives" in params:
        mask["objectives"] = {name: jax.tree.map(lambda _: name in names, head)
                              for name, head in params["objectives"].items()}
    return mask


def _scanned(step):
    """step(state, batches) -> (state, metrics), run once per entry of batches' leading axis;
    the metrics of every update come back stacked in order."""

    def steps(state, stacked_batches):
        return jax.lax.scan(step, state, stacked_batches)

    return steps


class TrainStep:
    """step(state, batches) -> (state, metrics), jitted with shardings, state donated.

    `batches` maps batch names to batches (xlm_jax/data/streams.py); the objectives reading
    them are trained. One update sums the gradients of `train.grad_accum_steps`
    microbatches of every batch. The loss is sum_o weight_o * (loss sum_o / normalizer_o),
    each normalizer over the whole global batch, however it is split. A non-finite loss or
    gradient leaves params, optimizer and extra state untouched and is reported in
    metrics["nonfinite"]; the loop decides whether that stops the run.

    A call may also run several updates (`train.steps_per_call`, or `num_steps`): one program
    scans the one-update step over batches stacked on a new leading axis (one per update, the
    rest laid out as a single batch) and returns every metric stacked the same way. That saves
    a dispatch and the program's fresh temporary buffers per update, and computes what as many
    single calls would (bit for bit on CPU, tests/train/test_steps_per_call.py).
    """

    def __init__(self, model, objectives, optimizer: optax.GradientTransformation, config, mesh, rules,
                 state_shardings, batch_sharding):
        self.model, self.objectives, self.optimizer = model, list(objectives), optimizer
        self.config, self.mesh, self.rules = config, mesh, rules
        self.state_shardings, self.batch_sharding = state_shardings, batch_sharding
        self._compiled = {}

    def __call__(self, state: TrainState, batches: dict, num_steps: int | None = None):
        """`num_steps` updates (default train.steps_per_call); with more than one, every batch
        array has a leading axis of num_steps and so does every metric."""
        return self.jitted(tuple(sorted(batches)), num_steps)(state, batches)

    def call_sharding(self, num_steps: int | None = None) -> NamedSharding:
        """Where a call's batch arrays live: the batch's sharding, behind an unsharded update axis
        when the call runs more than one update."""
        if (num_steps or self.config.train.steps_per_call) == 1:
            return self.batch_sharding
        return NamedSharding(self.mesh, PartitionSpec(None, *self.batch_sharding.spec))

    def jitted(self, batch_names: tuple[str, ...], num_steps: int | None = None):
        """The jitted call for the objectives reading `batch_names` (one per distinct set) running
        `num_steps` updates (default train.steps_per_call)."""
        num_steps = num_steps or self.config.train.steps_per_call
        key = (batch_names, num_steps)
        if key not in self._compiled:
            active = [o for o in self.objectives if o.batch_name in batch_names]
            call = self._step_fn(active, batch_names)
            if num_steps > 1:
                call = _scanned(call)
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self._compiled[key] = jax.jit(
                on_mesh(call, self.mesh, self.rules),
                in_shardings=(self.state_shardings, self.call_sharding(num_steps)),
                out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
        return self._compiled[key]

    def _step_fn(self, active, batch_names):
        config, model = self.config, self.model
        num_micro, num_steps = config.train.grad_accum_steps, config.train.num_steps
        schedule_fn = learning_rate_schedule(config.train)
        dropout_key = jax.random.key(config.train.seed + 1)
        prepare_key = jax.random.key(config.train.seed + 2)

        def micro_grads(params, micro, extra, rng, step, scales):
            """Grads of sum_o scale_o * loss_sum_o, each objective's sums, its per-row outputs."""
            # Batch k's dropout key: the step's own for the first batch (so an MLM-only step
            # draws what it always drew), folded with k for the others.
            rngs = {name: rng if k == 0 else jax.random.fold_in(rng, k) for k, name in enumerate(batch_names)}

            def loss_fn(p):
                ctx = StepContext(model, p, step, num_steps, rngs)
                total, terms, outputs = None, {}, {}
                for o in active:
                    terms[o.name], outputs[o.name] = o.loss_terms(ctx, micro[o.batch_name], extra.get(o.name))
                    weighted = scales[o.name] * terms[o.name]["loss_sum"]
                    total = weighted if total is None else total + weighted
                return total, (terms, outputs)

            grads, (terms, outputs) = jax.grad(loss_fn, has_aux=True)(params)
            return grads, terms, outputs

        def accumulated(params, batches, extra, rng, step, scales):
            """Summed grads and sums, and the per-row outputs in batch order, over the microbatches."""
            if num_micro == 1:
                return micro_grads(params, batches, extra, rng, step, scales)
            micro = _microbatches(batches, num_micro, self.mesh, self.rules)
            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(lambda: micro_grads(params, first, extra, rng, step, scales))
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[:2])

            def add(carry, xs):
                index, mb = xs
                grads, terms, outputs = micro_grads(params, mb, extra, jax.random.fold_in(rng, index), step, scales)
                return jax.tree.map(jnp.add, carry, (grads, terms)), outputs

            (grads, terms), outputs = jax.lax.scan(add, zeros, (jnp.arange(num_micro), micro))
            return grads, terms, _joined(outputs)

        def step(state: TrainState, batches):
            batches = dict(batches)
            for o in active:     # on the global batch, so it does not depend on the microbatching
                batches[o.batch_name] = o.prepare_batch(batches[o.batch_name],
                                                        jax.random.fold_in(prepare_key, state.step))
            norms = {o.name: o.normalizer(batches[o.batch_name]) for o in active}
            # Gradients are of sum_o (w_o * n_0 / n_o) * loss_sum_o, then divided by n_0: with one
            # objective of weight 1 the scale is exactly 1, the arithmetic of an MLM-only step.
            reference = norms[active[0].name]
            scales = {o.name: o.weight * reference / norms[o.name] for o in active}
            rng = jax.random.fold_in(dropout_key, state.step)
            grads, terms, outputs = accumulated(state.params, batches, state.extra, rng, state.step, scales)
            grads = jax.tree.map(lambda g: g / reference, grads)
            losses = {o.name: terms[o.name]["loss_sum"] / norms[o.name] for o in active}
            loss = sum(o.weight * losses[o.name] for o in active)
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

            def update(params, opt_state, extra):
                updates, new_opt_state = self.optimizer.update(grads, opt_state, params)
                new_params = optax.apply_updates(params, updates)
                # Heads of objectives this update does not train ("alternate") have a zero gradient,
                # but Adam's momentum and weight decay would still move them: keep them, and their
                # optimizer moments, as they are until their objective's turn.
                idle = _heads_of(params, {o.name for o in self.objectives if o not in active})
                idle_state = optax.tree_map_params(self.optimizer, lambda _, keep: keep, opt_state, idle,
                                                   transform_non_params=lambda _: False)
                params = jax.tree.map(lambda keep, old, new: old if keep else new, idle, params, new_params)
                opt_state = jax.tree.map(lambda keep, old, new: old if keep else new, idle_state, opt_state,
                                         new_opt_state)
                extra = dict(extra)
                for o in active:
                    if o.name in extra:
                        extra[o.name] = o.update_extra(extra[o.name], params, outputs[o.name], state.step)
                return params, opt_state, extra

            new_params, new_opt_state, new_extra = jax.lax.cond(
                finite, update, lambda p, o, e: (p, o, e), state.params, state.opt_state, state.extra)
            new_state = TrainState(step=state.step + 1, params=new_params, opt_state=new_opt_state, extra=new_extra)
            metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule_fn(state.step),
                       "nonfinite": (~finite).astype(jnp.int32)}
            for o in active:
                for key, value in o.metrics(terms[o.name], norms[o.name], state.step).items():
                    metrics[f"{o.name}/{key}"] = value
            return new_state, metrics

        return step
