"""The batch format of every pretraining stream, declared once.

A train step reads a dict of batches keyed by stream name (an objective's name), e.g.
`{"mlm": {...}, "tlm": {...}, "xlco": {...}}`; each batch is the rows of one stream. A stream
is one of three kinds, each built by xlm_jax.data.pipeline from the prepared data:

- "blocks": packed monolingual blocks, masked (MLM, XLM-R; the language discriminator);
- "tlm": a translation pair as one masked sequence `<s> src </s></s> tgt </s>`
  (examples.tlm_example; XLM's "reset" positions or InfoXLM's "continuous" ones);
- "pairs": the two sides of a translation pair as separate `<s> x </s>` sequences
  (examples.xlco_pair; InfoXLM's XLCo, translation-pair classification).

While `data.synthetic_pairs` is set, every example of the two pair kinds carries its
`pair_weight` (1.0 real, data.synthetic_weight synthetic: xlm_jax.data.synthetic).

`stream_fields` gives each field's per-example shape, dtype and logical axes (the batch axis
is implied in front), `batch_spec` the global shapes for compiling the step ahead of time.
This module imports no TensorFlow: model and objective code read it.
"""
import dataclasses
import math

import numpy as np

from xlm_jax.data import shards
from xlm_jax.errors import ConfigError

KINDS = ("blocks", "tlm", "pairs")
POSITIONS = ("continuous", "reset")
SCHEDULES = ("sum", "alternate")
PAIR_KINDS = ("tlm", "pairs")     # the kinds that read translation pairs


def max_predictions(seq_len: int, mask_prob: float, whole_word: bool = False) -> int:
    """Static number of prediction slots per sequence, enough for (nearly) every choice mask_example makes.

    Token-level choices never need more than ceil(seq_len * mask_prob). Whole words come in a
    random number of tokens, so they get a margin of 3 sqrt(seq_len * mask_prob) slots (128 ->
    34, 512 -> 104); the chosen words that would overflow it stay unmasked (whole, never cut),
    which happened to ~0.1% of sequences of 1000- and 8000-piece unigram models on 4 languages.
    """
    expected = seq_len * mask_prob
    slots = max(1, math.ceil(expected))
    if whole_word:   # 3 x sqrt(expected): ~3 standard deviations of the masked-token count for 2-token words
        slots += math.ceil(3 * math.sqrt(expected))
    return min(slots, seq_len)


@dataclasses.dataclass(frozen=True)
class Field:
    shape: tuple[int, ...]          # per example (the batch dim is excluded)
    dtype: np.dtype
    axes: tuple[str | None, ...]    # logical axes of those dims, e.g. ("length",); "batch" is implied in front


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    name: str                       # key of this stream's batch in the step's dict (an objective's name)
    kind: str                       # "blocks" | "tlm" | "pairs"
    batch_size: int                 # global rows per step
    positions: str = "continuous"   # "tlm" only: "continuous" (InfoXLM) or "reset" (XLM)


def stream_fields(spec: StreamSpec, config) -> dict[str, Field]:
    """{field: Field} of one example of `spec`'s stream under `config`.

    Language indices point into the prepared data's sorted `languages`; `language_ids` (the
    language at every position, for XLM's language embeddings) exist only when
    model.num_languages > 0; `pair_weight` (float32) only while data.synthetic_pairs is set.
    """

    _check_kind(spec)
    d = config.data
    length = d.seq_len
    slots = max_predictions(length, d.mask_prob, d.whole_word_mask)
    tokens = Field((length,), np.dtype(np.int32), ("length",))
    scalar = Field((), np.dtype(np.int32), ())
    weight = {"pair_weight": Field((), np.dtype(np.float32), ())} if getattr(d, "synthetic_pairs", "") else {}
    if spec.kind == "pairs":
        return {"src_ids": tokens, "tgt_ids": tokens, "src_language": scalar, "tgt_language": scalar, **weight}
    fields = {"input_ids": tokens}
    if spec.kind == "tlm":
        fields["position_ids"] = tokens
    fields.update(masked_positions=Field((slots,), np.dtype(np.int32), ("predictions",)),
                  masked_ids=Field((slots,), np.dtype(np.int32), ("predictions",)),
                  masked_weights=Field((slots,), np.dtype(np.float32), ("predictions",)),
                  language=scalar)
    if config.model.num_languages > 0:
        fields["language_ids"] = tokens
    if spec.kind == "tlm":
        fields.update(weight)
    return fields


def batch_spec(specs: list[StreamSpec], config) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """{stream name: {field: (global shape, dtype)}}: what train_batches yields, all processes'
    rows together, for compiling the step ahead of time without data."""
    check_streams(specs, shards.num_shards(config))
    return {spec.name: {key: ((spec.batch_size, *field.shape), field.dtype)
                        for key, field in stream_fields(spec, config).items()}
            for spec in specs}


def check_streams(specs: list[StreamSpec], num_shards: int, process_count: int = 1) -> None:
    """Every stream's rows split evenly over the S data shards (and so over the processes,
    whose count divides S): row j of a global batch belongs to shard j * S // B."""
    names = [spec.name for spec in specs]
    if not specs or len(set(names)) != len(names):
        raise ValueError(f"streams need distinct names, got {names}")
    for spec in specs:
        _check_kind(spec)
        if spec.kind == "tlm" and spec.positions not in POSITIONS:
            raise ConfigError(f"config field `{spec.name}.positions`: got {spec.positions!r}; use one of "
                              f"{', '.join(POSITIONS)}")
        b = spec.batch_size
        if not isinstance(b, (int, np.integer)) or b <= 0 or b % num_shards or b % process_count:
            raise ConfigError(f"config field `{spec.name}.batch_size`: got {b!r}; each stream's global batch "
                              f"must be a positive multiple of the {num_shards} data shards (data.shards; 0 = "
                              f"train.batch_size), which the {process_count} process(es) divide: e.g. "
                              f"{num_shards}, {2 * num_shards}, {4 * num_shards}")


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ConfigError(f"config field `objective_schedule`: got {schedule!r}; use \"sum\" (every stream "
                          f"every step, InfoXLM) or \"alternate\" (one stream a step in turn, XLM)")


def _check_kind(spec: StreamSpec) -> None:
    if spec.kind not in KINDS:
        raise ValueError(f"stream {spec.name!r}: kind {spec.kind!r} is not one of {', '.join(KINDS)}")
