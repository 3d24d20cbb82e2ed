"""Contrastive losses on sentence vectors, as pure functions: sums over the batch's rows.

- `infonce_terms`: MoCo / InfoXLM's InfoNCE, each query against its positive key and a queue
  of older keys (optionally the batch's other keys too); the keys carry no gradient.
- `ranking_terms`: the bidirectional in-batch softmax of a dual encoder with shared weights
  (LaBSE, Feng et al. 2022; mSimCSE): x_i must pick y_i among every y of the batch and y_i
  must pick x_i among every x, gradients through both sides, an additive margin m taken off
  the positive's score. Inside a jitted step the batch is the global one, so on a mesh every
  device's rows are negatives of every other's (XLA gathers the vectors), as LaBSE shares
  negatives across the cores of a pod.
- `vector_terms` / `collapse_metrics`: how spread out the sentence vectors are, so that a
  collapse to one vector (loss at chance, accuracy 0) shows in the log instead of passing for
  slow learning.
"""
import jax
import jax.numpy as jnp


def infonce_terms(queries, positives, queue, queue_valid, temperature: float, batch_keys=None,
                  weights=None) -> dict:
    """Sums over queries [N, H] of InfoNCE against their positive keys [N, H] and a queue [Q, H]
    (or None) of which the first `queue_valid` slots (a traced count) are real: loss_sum,
    correct (the positive scored above every real negative), count. With `batch_keys` (the N
    keys of the queries' own sentences, in query order, a pair's two sides N / 2 apart), the
    keys of the other pairs in the batch are negatives too. With `weights` [N], each query's
    terms count with its weight."""
    positive = jnp.sum(queries * positives, axis=-1) / temperature                       # [N]
    n = queries.shape[0]
    negatives = jnp.full((n, 0), -jnp.inf, queries.dtype)
    if queue is not None:
        real = jnp.arange(queue.shape[0]) < queue_valid
        negatives = jnp.where(real[None, :], queries @ queue.T / temperature, -jnp.inf)    # [N, Q]
    if batch_keys is not None:   # not the query's own sentence, nor its translation (the positive)
        rows, columns = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
        others = (columns != rows) & (columns != (rows + n // 2) % n)
        negatives = jnp.concatenate(
            [jnp.where(others, queries @ batch_keys.T / temperature, -jnp.inf), negatives], axis=1)
    logits = jnp.concatenate([positive[:, None], negatives], axis=1)
    per_query = jax.nn.logsumexp(logits, axis=1) - positive
    best_negative = jnp.max(negatives, axis=1) if negatives.shape[1] else jnp.full((n,), -jnp.inf)
    correct = (positive > best_negative).astype(jnp.float32)
    return _weighted(per_query, correct, weights)


def ranking_terms(x, y, temperature: float, margin: float = 0.0, weights=None) -> dict:
    """Sums of the bidirectional in-batch softmax over pairs (x_i, y_i), x and y [B, H]: for each
    i, -log softmax_j((x_i . y_j - m [i = j]) / T) at j = i, and the same from y_i over the x's
    (2B terms). `correct` counts the directions whose positive beats every other row. With
    `weights` [B], both directions of pair i count with weights[i] (its negatives count fully)."""
    scores = x @ y.T                                                              # [B, B]
    logits = (scores - margin * jnp.eye(x.shape[0], dtype=scores.dtype)) / temperature
    positive = jnp.diagonal(logits)
    per_direction = jnp.concatenate([jax.nn.logsumexp(logits, axis=1) - positive,      # x_i -> y
                                     jax.nn.logsumexp(logits, axis=0) - positive])     # y_i -> x
    others = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, scores)
    correct = jnp.concatenate([jnp.diagonal(scores) > jnp.max(others, axis=1),
                               jnp.diagonal(scores) > jnp.max(others, axis=0)]).astype(jnp.float32)
    return _weighted(per_direction, correct, None if weights is None else jnp.concatenate([weights] * 2))


def _weighted(per_row, correct, weights) -> dict:
    if weights is None:
        return {"loss_sum": jnp.sum(per_row), "correct": jnp.sum(correct),
                "count": jnp.asarray(per_row.shape[0], jnp.float32)}
    return {"loss_sum": jnp.sum(per_row * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def vector_terms(vectors) -> dict:
    """Sums over the sentence vectors [N, H], each scaled to length 1, from which
    collapse_metrics computes the spread of the whole global batch. They add up exactly over
    microbatches (Chan et al.'s pairwise variance): the vectors' sum, their squared deviations
    from their own mean, the sum's square over N, and N."""
    unit = jax.lax.stop_gradient(vectors.astype(jnp.float32))
    unit = unit / jnp.maximum(jnp.linalg.norm(unit, axis=-1, keepdims=True), 1e-12)
    n = unit.shape[0]
    total = jnp.sum(unit, axis=0)
    return {"unit_sum": total, "unit_deviation_sum": jnp.sum((unit - total / n) ** 2, axis=0),
            "unit_sum_square_over_n": total * total / n, "vectors": jnp.asarray(n, jnp.float32)}


def collapse_metrics(terms: dict) -> dict:
    """mean_cosine: the mean cosine of two different sentence vectors of the batch (1 when they
    are all one vector); vector_std: the per-dimension standard deviation of the unit vectors,
    averaged over dimensions and times sqrt(H), so that isotropic vectors give about 1 and one
    vector for every sentence gives 0."""
    n, total = terms["vectors"], terms["unit_sum"]
    mean_cosine = (jnp.sum(total * total) - n) / jnp.maximum(n * (n - 1), 1.0)
    # Chan et al.: the squared deviations within each part, plus those of the parts' means from the mean
    deviations = terms["unit_deviation_sum"] + terms["unit_sum_square_over_n"] - total * total / n
    variance = jnp.maximum(deviations / n, 0.0)
    return {"mean_cosine": mean_cosine,
            "vector_std": jnp.mean(jnp.sqrt(variance)) * jnp.sqrt(jnp.asarray(total.shape[0], jnp.float32))}
