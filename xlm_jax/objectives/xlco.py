"""InfoXLM's cross-lingual contrast (XLCo): a translation's sentence vector should be nearer its
source's than any of a queue of other sentences' (MoCo's InfoNCE with a momentum encoder).

- Query encoder: the trained model; key encoder: its momentum copy (p_k <- m p_k + (1 - m) p_q
  after every applied update, m = `xlco.momentum`, 0.9999 in InfoXLM), both from the same
  weights. Only the bottom `layer` layers exist in the copy: the vector is the `<s>` state of
  that layer (InfoXLM: layer 8 of 12; `xlco.layer = 0` picks two thirds of the depth), through
  a bias-free d x d projection when `xlco.projection` (the key side uses its copy of it).
- Both directions: with pairs (x, y), x queries y's key and y queries x's. The loss of a query
  q is cross-entropy over [q.k+, q.queue^T] / `xlco.temperature` (0.25) with the positive
  first; InfoXLM does not L2-normalize (`xlco.normalize` does). `xlco.batch_negatives` adds the
  keys of the batch's other pairs as negatives (the microbatch's, under accumulation): unlike
  the queue's, written by older key encoders, they cannot be told apart by their age.
- Synthetic pairs (a batch with `pair_weight`, xlm_jax/data/synthetic.py): both queries of a
  pair count with its weight, in the loss sum and the normalizer alike; their keys join the
  queue as any other.
- The queue: a FIFO of `xlco.queue_size` keys (InfoXLM: 131,072) of the whole global batch,
  all devices and hosts, sharded over the batch's mesh axes and checkpointed with its
  position, so a resumed run contrasts against exactly the keys it would have. It starts
  empty and warms up: until it is full, only the slots written so far serve as negatives.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models.encoder import param_with_axes
from xlm_jax.models.masked_lm import bottom_layers_params
from xlm_jax.objectives.base import Objective, StepContext
from xlm_jax.train import metrics as metrics_lib


def infonce_terms(queries, positives, queue, queue_valid, temperature: float, batch_keys=None,
                  weights=None) -> dict:
    """Sums over queries [N, H] of InfoNCE against their positive keys [N, H] and a queue [Q, H]
    of which the first `queue_valid` slots (a traced count) are real: loss_sum, correct (the
    positive scored above every real negative), count. With `batch_keys` (the N keys of the
    queries' own sentences, in query order, a pair's two sides N / 2 apart), the keys of the
    other pairs in the batch are negatives too. With `weights` [N], each query's terms count
    with its weight."""
    positive = jnp.sum(queries * positives, axis=-1) / temperature                       # [N]
    negatives = queries @ queue.T / temperature                                          # [N, Q]
    real = jnp.arange(queue.shape[0]) < queue_valid
    negatives = jnp.where(real[None, :], negatives, -jnp.inf)
    if batch_keys is not None:   # not the query's own sentence, nor its translation (the positive)
        n = queries.shape[0]
        rows, columns = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
        others = (columns != rows) & (columns != (rows + n // 2) % n)
        negatives = jnp.concatenate(
            [jnp.where(others, queries @ batch_keys.T / temperature, -jnp.inf), negatives], axis=1)
    logits = jnp.concatenate([positive[:, None], negatives], axis=1)
    per_query = jax.nn.logsumexp(logits, axis=1) - positive
    correct = (positive > jnp.max(negatives, axis=1)).astype(jnp.float32)
    if weights is None:
        return {"loss_sum": jnp.sum(per_query), "correct": jnp.sum(correct),
                "count": jnp.asarray(queries.shape[0], jnp.float32)}
    return {"loss_sum": jnp.sum(per_query * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def enqueue(queue, position, valid, keys):
    """(queue, position, valid) after writing keys [n, H] at `position` (FIFO: the oldest go)."""
    size = queue.shape[0]
    queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (position, 0))
    return queue, (position + keys.shape[0]) % size, jnp.minimum(valid + keys.shape[0], size)


def momentum_update(key_params, query_params, momentum: float):
    """p_k <- m * p_k + (1 - m) * p_q, leaf by leaf."""
    return jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * q, key_params, query_params)


class CrossLingualContrast(Objective):
    name = "xlco"
    stream_kind = "pairs"
    OPTIONS = {"layer": 0, "momentum": 0.9999, "queue_size": 131_072, "temperature": 0.25,
               "projection": False, "normalize": False, "batch_negatives": False}

    @classmethod
    def check(cls, config):
        o, layers = config.xlco, config.model.num_layers
        cls.require(isinstance(o.layer, int) and 0 <= o.layer <= layers, "layer",
                    f"got {o.layer!r}; a layer in 1..{layers} (model.num_layers), or 0 for two thirds "
                    "of the depth (InfoXLM: 8 of 12)")
        cls.require(0 <= o.momentum < 1, "momentum", f"got {o.momentum!r}; must be in [0, 1)")
        cls.require(o.temperature > 0, "temperature", f"got {o.temperature!r}; must be > 0")
        keys = 2 * (o.batch_size or config.train.batch_size)
        cls.require(isinstance(o.queue_size, int) and o.queue_size > 0 and o.queue_size % keys == 0,
                    "queue_size", f"got {o.queue_size!r}; the queue takes the {keys} keys of a step "
                    f"(2 x xlco batch size) at a time, so use a positive multiple of {keys}, "
                    f"e.g. {max(1, round(o.queue_size / keys)) * keys}")

    @property
    def depth(self) -> int:
        layers = self.config.model.num_layers
        return self.options.layer or max(1, round(2 * layers / 3))

    def normalizer(self, batch):
        if "pair_weight" in batch:    # both queries of a pair carry its weight
            return 2 * jnp.sum(batch["pair_weight"])
        return jnp.asarray(2 * batch["src_ids"].shape[0], jnp.float32)

    # -- state ----------------------------------------------------------------------------------
    def _projection(self):
        return nn.Dense(self.config.model.hidden_size, use_bias=False, param_dtype=jnp.float32,
                        kernel_init=param_with_axes(nn.initializers.normal(0.02), ("embed", None)))

    def init_head(self, rng):
        if not self.options.projection:
            return None
        hidden = self.config.model.hidden_size
        return self._projection().init(rng, jnp.zeros((1, hidden)))["params"]

    def _key_side(self, params):
        """What the key encoder copies of `params`: embeddings, the bottom layers, the projection."""
        copied = {"encoder": bottom_layers_params(self.config.model, params["encoder"], self.depth)}
        if self.options.projection:
            copied["projection"] = params["objectives"][self.name]
        return copied

    def init_extra(self, params):
        size, hidden = self.options.queue_size, self.config.model.hidden_size
        return {"key_params": self._key_side(params),
                "queue": nn.LogicallyPartitioned(jnp.zeros((size, hidden), jnp.float32), names=("queue", None)),
                "position": jnp.zeros((), jnp.int32), "valid": jnp.zeros((), jnp.int32)}

    # -- the loss -------------------------------------------------------------------------------
    def _vectors(self, states, projection):
        vectors = states[self.depth][:, 0].astype(jnp.float32)            # <s> at the chosen layer
        if projection is not None:
            vectors = self._projection().apply({"params": projection}, vectors)
        if self.options.normalize:
            vectors = vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)
        return vectors

    def loss_terms(self, ctx: StepContext, batch, extra):
        rows = batch["src_ids"].shape[0]
        ids = jnp.concatenate([batch["src_ids"], batch["tgt_ids"]])            # x_1..x_B, y_1..y_B
        language_ids = None
        if self.config.model.num_languages:
            languages = jnp.concatenate([batch["src_language"], batch["tgt_language"]])
            language_ids = jnp.broadcast_to(languages[:, None], ids.shape)
        _, states = ctx.encode(ids, language_ids=language_ids, depth=self.depth, rng=ctx.rngs[self.batch_name])
        queries = self._vectors(states, ctx.params.get("objectives", {}).get(self.name))
        key_params = extra["key_params"]
        _, key_states = ctx.encode(ids, language_ids=language_ids, depth=self.depth, params=key_params,
                                   deterministic=True)
        keys = jax.lax.stop_gradient(self._vectors(key_states, key_params.get("projection")))
        positives = jnp.concatenate([keys[rows:], keys[:rows]])                # x_i's is y_i's key, and back
        weights = jnp.concatenate([batch["pair_weight"]] * 2) if "pair_weight" in batch else None
        terms = infonce_terms(queries, positives, extra["queue"], extra["valid"], self.options.temperature,
                              keys if self.options.batch_negatives else None, weights)
        return terms, {"keys": jnp.stack([keys[:rows], keys[rows:]], axis=1)}   # [B, 2, H], row order

    def update_extra(self, extra, params, outputs, step):
        keys = outputs["keys"].reshape(-1, outputs["keys"].shape[-1])          # x_1, y_1, x_2, y_2, ...
        queue, position, valid = enqueue(extra["queue"], extra["position"], extra["valid"], keys)
        key_params = momentum_update(extra["key_params"], self._key_side(params), self.options.momentum)
        return {"key_params": key_params, "queue": queue, "position": position, "valid": valid}

    def metrics(self, terms, normalizer, step):
        return {"loss": terms["loss_sum"] / normalizer, "accuracy": terms["correct"] / normalizer}

    # -- cost -----------------------------------------------------------------------------------
    def flops(self):
        m, seq = self.config.model, self.config.data.seq_len
        sentences = 2 * self.batch_size
        forward = metrics_lib.forward_flops_per_token(m, seq, num_layers=self.depth) * seq * sentences
        contrast = 2 * sentences * m.hidden_size * (self.options.queue_size + 1)
        return {self.name: 3 * (forward + contrast), f"{self.name} key encoder (forward only)": forward}

    def tokens_per_step(self):
        return 2 * self.batch_size * self.config.data.seq_len
