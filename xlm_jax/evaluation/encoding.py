"""Sentence vectors, fast: length buckets, fixed batch shapes, pooled on the mesh.

Sorting sentences by length and cutting them into a few fixed shapes (length buckets
of 8..512 tokens, each with one number of rows) keeps padding low and compiles each
bucket once, on its first use; pooling happens on device, so only [layers, batch, hidden]
vectors come back to the host, never every layer's token states. All batches are
dispatched before the first result is fetched, so the host tokenizes and pads the next
batch while the devices run the previous one.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.evaluation.evaluator import EvalContext, Subject
from xlm_jax.evaluation.languages import language_inputs
from xlm_jax.models.masked_lm import MaskedLM, pool_tokens, truncated
from xlm_jax.parallel.mesh import batch_sharding, batch_shards, on_mesh

LENGTH_BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
POOLINGS = ("mean", "first", "inner")   # mean over tokens (XTREME retrieval), the first token (<s> / [CLS]),
                                        # or the mean between <s> and </s> (Dufter & Schuetze 2020)


def middle_layer(num_layers: int) -> int:
    """XTREME's retrieval layer: 7 of a 12-layer model, i.e. num_layers // 2 + 1 (index into
    [embeddings, layer 1, ..., layer L])."""
    return min(num_layers // 2 + 1, num_layers)


def resolve_layers(layers, num_layers: int) -> tuple[int, ...]:
    """Layer indices into [embeddings, 1..L]; None = the middle layer; negatives count from L."""
    if layers is None:
        layers = (middle_layer(num_layers),)
    elif isinstance(layers, int):
        layers = (layers,)
    resolved = []
    for layer in layers:
        index = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= num_layers:
            raise ValueError(f"layer {layer} does not exist: the model has hidden states 0 (embeddings) "
                             f"to {num_layers}")
        resolved.append(int(index))
    return tuple(resolved)


def token_rows(tokenizer, texts: list[str], max_len: int) -> list[np.ndarray]:
    """<s> pieces </s> per text, truncated to max_len tokens (as XTREME truncates)."""
    bos, eos = np.array([tokenizer.bos_id], np.int32), np.array([tokenizer.eos_id], np.int32)
    return [np.concatenate([bos, np.asarray(ids[:max_len - 2], np.int32), eos])
            for ids in tokenizer.encode(list(texts))]


class SentenceEncoder:
    """Pooled vectors of chosen layers for a model architecture on a mesh; any params of it.

    batch_tokens: the tokens of one call (rows x bucket length).
    """

    def __init__(self, model_config, tokenizer, mesh, rules, batch_tokens: int = 4096):
        self.config, self.tokenizer, self.mesh, self.rules = model_config, tokenizer, mesh, rules
        self.buckets = tuple(b for b in LENGTH_BUCKETS if b < model_config.max_len) + (model_config.max_len,)
        self.shards = batch_shards(mesh, rules)
        self.rows_sharding = batch_sharding(mesh, rules)
        self.batch_tokens = batch_tokens
        self._pool_fns = {}

    def _pool_fn(self, layers: tuple[int, ...], pooling: str):
        """Jitted once per (layers, pooling); runs only the layers up to the highest one asked for
        (for the middle layer of 12: 7 of them)."""
        if (layers, pooling) not in self._pool_fns:
            self._pool_fns[layers, pooling] = self._make_pool_fn(layers, pooling)
        return self._pool_fns[layers, pooling]

    def _make_pool_fn(self, layers: tuple[int, ...], pooling: str):
        pad_id, with_languages = self.tokenizer.pad_id, bool(self.config.num_languages)
        depth = max(max(layers), 1)

        def pool(params, ids, language_id):
            language_ids = jnp.full_like(ids, language_id) if with_languages else None
            module, params = truncated(self.config, params, depth)
            _, hidden = module.apply({"params": params}, ids, language_ids=language_ids,
                                     method=MaskedLM.hidden_states)
            chosen = hidden[jnp.asarray(layers)].astype(jnp.float32)          # [k, B, S, H]
            return pool_tokens(chosen, ids, pad_id, pooling)                  # [k, B, H]

        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.jit(on_mesh(pool, self.mesh, self.rules),
                       in_shardings=(None, self.rows_sharding, replicated), out_shardings=replicated)

    def bucket_of(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def rows_per_call(self, bucket: int) -> int:
        """Rows of every call in `bucket`: batch_tokens / bucket, a multiple of the batch shards.
        One fixed shape per bucket, so a bucket compiles once, on first use."""
        return max(self.shards, self.batch_tokens // bucket // self.shards * self.shards)

    def chunks(self, lengths: np.ndarray):
        """(start, count, bucket) over the sentences sorted by length: each call takes as many
        sentences as fit the rows of the bucket of its longest one, so calls pad rows only
        where the sentences run out or change bucket."""
        rows_if_longest = np.array([self.rows_per_call(self.bucket_of(n)) for n in lengths])
        start = 0
        while start < len(lengths):
            window = rows_if_longest[start:start + rows_if_longest[start]]
            fits = window >= np.arange(1, len(window) + 1)   # True, then False once too many
            count = len(window) if fits.all() else int(np.argmin(fits))
            yield start, count, self.bucket_of(lengths[start + count - 1])
            start += count

    def __call__(self, params, texts: list[str], layers=None, pooling: str = "mean",
                 language_id: int = 0, tokenizer=None) -> np.ndarray:
        """float32 [len(layers), len(texts), hidden], in the order of `texts`; tokenizer: the one of
        the texts' language (default: the model's, shared by its languages)."""
        rows = token_rows(tokenizer or self.tokenizer, texts, self.config.max_len) if len(texts) else []
        return self.encode_rows(params, rows, layers, pooling, language_id)

    def encode_rows(self, params, rows: list[np.ndarray], layers=None, pooling: str = "mean",
                    language_id: int = 0) -> np.ndarray:
        """`__call__` on rows of token ids already laid out (`<s> ... </s>`, at most max_len), for
        evaluators that choose ids rather than text (word translation)."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        layers = resolve_layers(layers, self.config.num_layers)
        if not len(rows):
            return np.zeros((len(layers), 0, self.config.hidden_size), np.float32)
        order = np.argsort([len(r) for r in rows], kind="stable")
        pool = self._pool_fn(layers, pooling)
        pending = []
        for start, count, bucket in self.chunks(np.array([len(rows[i]) for i in order])):
            ids = np.full((self.rows_per_call(bucket), bucket), self.tokenizer.pad_id, np.int32)
            for j, i in enumerate(order[start:start + count]):
                ids[j, :len(rows[i])] = rows[i]
            global_ids = jax.make_array_from_callback(ids.shape, self.rows_sharding, lambda index, ids=ids: ids[index])
            pending.append((start, count, pool(params, global_ids, np.int32(language_id))))
        vectors = np.empty((len(layers), len(rows), self.config.hidden_size), np.float32)
        for start, count, pooled in pending:
            vectors[:, order[start:start + count]] = np.asarray(pooled)[:, :count]
        return vectors


def make_context(subject: Subject, encoder: SentenceEncoder | None = None, **context_fields) -> EvalContext:
    """An EvalContext for `subject`; pass the encoder of another subject of the same architecture
    on the same mesh (e.g. the model's, for its random-init baseline) to reuse its compiled shapes."""
    encoder = encoder or SentenceEncoder(subject.model_config, subject.tokenizer, subject.mesh, subject.rules)

    def encode(texts, layers=None, pooling="mean", language=None):
        return encode_languages(encoder, subject, list(texts), layers, pooling, language)

    return EvalContext(subject=subject, encode=encode, encoder=encoder, **context_fields)


def encode_languages(encoder: SentenceEncoder, subject: Subject, texts: list[str], layers, pooling: str,
                     language) -> np.ndarray:
    """`encoder` on `subject`'s params, each text as its language: `language` is one code for all
    texts, or a list of one per text. One encoder call per distinct tokenizer and language id, over
    its distinct texts: a model that does not use languages encodes everything in one call, as
    before languages were known."""
    languages = [language] * len(texts) if language is None or isinstance(language, str) else list(language)
    if len(languages) != len(texts):
        raise ValueError(f"encode: {len(languages)} languages for {len(texts)} texts")
    inputs_of = {code: language_inputs(subject, code) for code in dict.fromkeys(languages)}
    groups = {}   # LanguageInputs -> {distinct text: [its positions in texts]}
    for position, (text, code) in enumerate(zip(texts, languages)):
        groups.setdefault(inputs_of[code], {}).setdefault(text, []).append(position)
    if not groups:
        return encoder(subject.params, [], layers, pooling)
    vectors = None
    for inputs, positions_of in groups.items():
        pooled = encoder(subject.params, list(positions_of), layers, pooling, inputs.language_id, inputs.tokenizer)
        if len(groups) == 1 and len(positions_of) == len(texts):
            return pooled   # every text distinct and of one encoding: already in order
        if vectors is None:
            vectors = np.empty((pooled.shape[0], len(texts), pooled.shape[2]), np.float32)
        for row, positions in enumerate(positions_of.values()):
            vectors[:, positions] = pooled[:, row:row + 1]
    return vectors
