"""InfoXLM's cross-lingual contrast (XLCo), and the in-batch translation ranking that aligns at
small scale (LaBSE, mSimCSE): a translation's sentence vector should be nearer its source's
than other sentences'.

The sentence vector (`xlco.pooling`): the `<s>` state ("cls", InfoXLM) or the mean of the real
tokens' states ("mean": what the retrieval evaluators score) of layer `xlco.layer` (InfoXLM: 8
of 12; 0 picks two thirds of the depth), through a bias-free d x d projection when
`xlco.projection`, L2-normalized when `xlco.normalize`.

Keys (`xlco.key_encoder`):
- "momentum" (InfoXLM, MoCo): keys come from a momentum copy of the trained model (p_k <- m p_k
  + (1 - m) p_q after every applied update, m = `xlco.momentum`, 0.9999 in InfoXLM), with no
  gradient; only the bottom `layer` layers exist in the copy, and it copies the projection.
  Both directions: with pairs (x, y), x queries y's key and y queries x's; a query's loss is
  cross-entropy over [q.k+, q.queue^T] / `xlco.temperature` (0.25) with the positive first;
  InfoXLM does not L2-normalize. The queue: a FIFO of `xlco.queue_size` keys (InfoXLM:
  131,072; 0 = none) of the whole global batch, all devices and hosts, sharded over the
  batch's mesh axes and checkpointed with its position, so a resumed run contrasts against
  exactly the keys it would have; it starts empty and warms up. `xlco.batch_negatives` adds
  the keys of the batch's other pairs: unlike the queue's, written by older key encoders, they
  cannot be told apart by their age.
- "shared" (LaBSE's dual encoder with shared weights, mSimCSE): the trained model encodes both
  sides, gradients through both, no copy and no queue; the loss is the bidirectional in-batch
  softmax (objectives/contrastive.ranking_terms) over the global batch, with an additive margin
  `xlco.margin` on the positive's cosine (LaBSE: 0.3; needs `normalize`). Under
  train.grad_accum_steps = A the negatives are the microbatch's B / A pairs, not the batch's
  (the loss of one microbatch does not see the others' vectors), as with `batch_negatives`.

Synthetic pairs (a batch with `pair_weight`, xlm_jax/data/synthetic.py): both directions of a
pair count with its weight, in the loss sum and the normalizer alike.

Collapse is logged, not guessed at: every step reports the mean cosine between the batch's
sentence vectors and their per-dimension spread (objectives/contrastive.collapse_metrics), and
the log warns when the spread falls below `xlco.collapse_std` (a `<s>` vector that became one
constant for every sentence: loss at chance, accuracy 0).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models import flops as flops_lib
from xlm_jax.models.encoder import param_with_axes
from xlm_jax.models.masked_lm import bottom_layers_params, pool_tokens
from xlm_jax.objectives.base import Objective, StepContext
from xlm_jax.objectives.contrastive import collapse_metrics, infonce_terms, ranking_terms, vector_terms

POOLINGS = {"cls": "first", "mean": "mean"}    # xlco.pooling -> models.masked_lm.pool_tokens
KEY_ENCODERS = ("momentum", "shared")


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

    @classmethod
    def check(cls, config):
        o, layers = config.xlco, config.model.num_layers
        cls.require(isinstance(o.layer, int) and 0 <= o.layer <= layers, "layer",
                    f"got {o.layer!r}; a layer in 1..{layers} (model.num_layers), or 0 for two thirds "
                    "of the depth (InfoXLM: 8 of 12)")
        cls.require(o.pooling in POOLINGS, "pooling", f"got {o.pooling!r}; use \"cls\" (the <s> state, "
                    "InfoXLM) or \"mean\" (the mean of the real tokens' states, as retrieval scores)")
        cls.require(o.key_encoder in KEY_ENCODERS, "key_encoder", f"got {o.key_encoder!r}; use \"momentum\" "
                    "(InfoXLM: a momentum copy and a queue) or \"shared\" (LaBSE: the trained model on "
                    "both sides, in-batch negatives)")
        cls.require(0 <= o.momentum < 1, "momentum", f"got {o.momentum!r}; must be in [0, 1)")
        cls.require(o.temperature > 0, "temperature", f"got {o.temperature!r}; must be > 0")
        cls.require(0 <= o.margin < 2, "margin", f"got {o.margin!r}; an additive margin on a cosine, "
                    "in [0, 2) (LaBSE: 0.3)")
        cls.require(o.collapse_std >= 0, "collapse_std", f"got {o.collapse_std!r}; must be >= 0 (0 = never warn)")
        if o.margin:
            cls.require(o.key_encoder == "shared", "margin", "an additive margin belongs to the in-batch "
                        "ranking loss: set xlco.key_encoder=shared, or xlco.margin=0")
            cls.require(o.normalize, "margin", "the margin is taken off a cosine: set xlco.normalize=True")
        keys = 2 * (o.batch_size or config.train.batch_size)
        if o.key_encoder == "shared":
            cls.require(o.queue_size == 0, "queue_size", f"got {o.queue_size!r}; a shared key encoder "
                        "contrasts within the batch only: set xlco.queue_size=0")
            cls.require(not o.batch_negatives, "batch_negatives", "a shared key encoder always contrasts "
                        "within the batch; leave xlco.batch_negatives False")
            return
        cls.require(isinstance(o.queue_size, int) and o.queue_size >= 0 and o.queue_size % keys == 0,
                    "queue_size", f"got {o.queue_size!r}; the queue takes the {keys} keys of a step "
                    f"(2 x xlco batch size) at a time, so use a positive multiple of {keys}, "
                    f"e.g. {max(1, round(o.queue_size / keys)) * keys}, or 0 for no queue")
        cls.require(o.queue_size > 0 or o.batch_negatives, "queue_size", "with no queue and no "
                    "batch_negatives a query has no negative; set xlco.batch_negatives=True or a queue")

    @property
    def depth(self) -> int:
        layers = self.config.model.num_layers
        return self.options.layer or max(1, round(2 * layers / 3))

    @property
    def shared(self) -> bool:
        return self.options.key_encoder == "shared"

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
        if self.shared:
            return None
        extra = {"key_params": self._key_side(params)}
        if self.options.queue_size:
            size, hidden = self.options.queue_size, self.config.model.hidden_size
            extra.update(queue=nn.LogicallyPartitioned(jnp.zeros((size, hidden), jnp.float32), names=("queue", None)),
                         position=jnp.zeros((), jnp.int32), valid=jnp.zeros((), jnp.int32))
        return extra

    # -- the loss -------------------------------------------------------------------------------
    def _vectors(self, states, ids, projection):
        """The sentence vectors of the chosen layer's states: pooled, projected, normalized."""
        vectors = pool_tokens(states[self.depth].astype(jnp.float32), ids, self.config.model.pad_token_id,
                              POOLINGS[self.options.pooling])
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
        queries = self._vectors(states, ids, ctx.params.get("objectives", {}).get(self.name))
        pair_weight = batch.get("pair_weight")
        if self.shared:
            o = self.options
            terms = ranking_terms(queries[:rows], queries[rows:], o.temperature, o.margin, pair_weight)
            return {**terms, **vector_terms(queries)}, None
        key_params = extra["key_params"]
        _, key_states = ctx.encode(ids, language_ids=language_ids, depth=self.depth, params=key_params,
                                   deterministic=True)
        keys = jax.lax.stop_gradient(self._vectors(key_states, ids, key_params.get("projection")))
        positives = jnp.concatenate([keys[rows:], keys[:rows]])                # x_i's is y_i's key, and back
        weights = None if pair_weight is None else jnp.concatenate([pair_weight] * 2)
        queue, valid = (extra["queue"], extra["valid"]) if self.options.queue_size else (None, None)
        terms = infonce_terms(queries, positives, queue, valid, self.options.temperature,
                              keys if self.options.batch_negatives else None, weights)
        return {**terms, **vector_terms(queries)}, {"keys": jnp.stack([keys[:rows], keys[rows:]], axis=1)}

    def update_extra(self, extra, params, outputs, step):
        updated = {"key_params": momentum_update(extra["key_params"], self._key_side(params), self.options.momentum)}
        if self.options.queue_size:
            keys = outputs["keys"].reshape(-1, outputs["keys"].shape[-1])      # x_1, y_1, x_2, y_2, ...
            updated["queue"], updated["position"], updated["valid"] = enqueue(
                extra["queue"], extra["position"], extra["valid"], keys)
        return updated

    def metrics(self, terms, normalizer, step):
        return {"loss": terms["loss_sum"] / normalizer, "accuracy": terms["correct"] / normalizer,
                **collapse_metrics(terms)}

    def warnings(self, metrics: dict) -> list[str]:
        spread, floor = metrics.get("vector_std"), self.options.collapse_std
        if spread is None or spread >= floor:
            return []
        return [f"xlco's sentence vectors have collapsed: per-dimension spread {spread:.4f} < "
                f"xlco.collapse_std={floor} (mean cosine between sentences {metrics['mean_cosine']:.3f}); "
                "every sentence gets nearly one vector, so the loss sits at chance. Lower "
                "train.learning_rate or xlco.temperature, or use xlco.pooling=mean"]

    # -- cost -----------------------------------------------------------------------------------
    def flops(self):
        m, seq = self.config.model, self.config.data.seq_len
        sentences = 2 * self.batch_size
        forward = flops_lib.forward_flops_per_token(m, seq, num_layers=self.depth) * seq * sentences
        if self.shared:     # both sides trained; a [B, B] score matrix
            return {self.name: 3 * (forward + 2 * self.batch_size * self.batch_size * m.hidden_size)}
        negatives = self.options.queue_size + (sentences if self.options.batch_negatives else 0)
        contrast = 2 * sentences * m.hidden_size * (negatives + 1)
        return {self.name: 3 * (forward + contrast), f"{self.name} key encoder (forward only)": forward}

    def tokens_per_step(self):
        return 2 * self.batch_size * self.config.data.seq_len
