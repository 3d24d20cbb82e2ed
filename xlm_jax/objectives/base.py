"""The objective interface: everything the step, the loop and the benchmark need to know of a loss.

An objective is configured by name: `config.objectives.<name>` is its weight (0 = off) and
`config.<name>` holds its options (with `batch_size`, 0 = train.batch_size). It declares

- the batch it reads: a stream of the data pipeline (`stream()`, whose fields
  xlm_jax/data/streams.py declares once); objectives naming the same `batch_name` share
  one batch and one forward pass (the language discriminator reads MLM's batch);
- trainable params beside the model (`init_head`, kept in params["objectives"][name]) and
  state that is not trained by gradients (`init_extra`, kept in TrainState.extra[name]:
  a momentum encoder, a queue), both sharded by their logical axes and checkpointed;
- its loss as sums over the batch's rows plus a normalizer that depends on the batch only
  (`normalizer`, `loss_terms`), so microbatches and hosts add up to the exact global mean;
- `update_extra` after each optimizer update, `metrics`, `warnings` (read off the metrics at
  each log point), and its model FLOPs per step.
"""
import dataclasses
from typing import Any, ClassVar

import jax
import ml_collections

from xlm_jax.config import default_config
from xlm_jax.data.streams import StreamSpec
from xlm_jax.errors import ConfigError
from xlm_jax.models.masked_lm import MaskedLM, truncated


@dataclasses.dataclass
class StepContext:
    """What an objective's loss sees of one (micro)step: the model at `params` and its forward
    passes. `encode_batch` is computed once per batch and shared by the objectives reading it."""
    model: MaskedLM
    params: Any
    step: jax.Array          # the update being computed (0-based), e.g. for scheduled weights
    num_steps: int
    rngs: dict               # batch name -> dropout key
    deterministic: bool = False
    _cache: dict = dataclasses.field(default_factory=dict)

    def encode(self, input_ids, *, position_ids=None, language_ids=None, depth=None, params=None,
               rng=None, deterministic=None):
        """(last hidden state, every layer's states [depth + 1, B, S, H]) of the bottom `depth`
        layers (default all) of the model at `params` (default the trained ones)."""
        config = self.model.config
        module, params = truncated(config, self.params if params is None else params, depth or config.num_layers)
        deterministic = self.deterministic if deterministic is None else deterministic
        return module.apply({"params": params}, input_ids, position_ids=position_ids, language_ids=language_ids,
                            deterministic=deterministic, rngs=None if deterministic else {"dropout": rng},
                            method=MaskedLM.hidden_states)

    def encode_batch(self, name: str, batch: dict):
        """encode() of a stream batch's input_ids (with its position and language ids, if any),
        once for all the objectives that read batch `name`."""
        if name not in self._cache:
            self._cache[name] = self.encode(batch["input_ids"], position_ids=batch.get("position_ids"),
                                            language_ids=batch.get("language_ids"), rng=self.rngs[name])
        return self._cache[name]

    def mlm_logits(self, hidden):
        return self.model.apply({"params": self.params}, hidden, method=MaskedLM.mlm_logits)


class Objective:
    """Base of every pretraining objective; subclasses set `name` and `stream_kind`. Its options
    and their defaults are the config section `<name>` of the schema (xlm_jax/config.py)."""
    name: ClassVar[str]
    stream_kind: ClassVar[str]                    # "blocks", "tlm" or "pairs" (xlm_jax/data/streams.py)

    def __init__(self, config, weight: float, languages: list[str] | None):
        self.config, self.weight, self.languages = config, float(weight), languages
        self.options = config[self.name]

    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(default_config()[cls.name])

    @classmethod
    def check(cls, config) -> None:
        """Raises ConfigError naming `<name>.<option>` for a bad option (overridden per objective)."""

    @classmethod
    def require(cls, ok: bool, option: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"config field `{cls.name}.{option}`: {message}")

    # -- the batch ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.options.batch_size or self.config.train.batch_size

    @property
    def batch_name(self) -> str:
        """The stream this objective reads; another objective's name to share its batch."""
        return self.name

    def stream(self) -> StreamSpec:
        return StreamSpec(self.batch_name, self.stream_kind, self.batch_size)

    # -- state ----------------------------------------------------------------------------------
    def init_head(self, rng) -> Any:
        """Boxed (logically partitioned) params of this objective's own trainable layers, or None."""
        return None

    def init_extra(self, params) -> Any:
        """State beside the params that no gradient trains (None for most objectives), from the
        params (boxed or not: select and copy, so the boxes' axis names carry over)."""
        return None

    # -- the loss -------------------------------------------------------------------------------
    def prepare_batch(self, batch, key):
        """The global batch as the loss reads it, made on device before microbatching (so that,
        e.g., negatives drawn from other rows do not depend on the split); `key` is the step's."""
        return batch

    def normalizer(self, batch) -> jax.Array:
        """The global batch's denominator of this objective's mean loss (from the batch alone)."""
        raise NotImplementedError

    def loss_terms(self, ctx: StepContext, batch, extra) -> tuple[dict, Any]:
        """(sums over the batch's rows: "loss_sum" and what metrics() needs, per-row outputs
        for update_extra or None)."""
        raise NotImplementedError

    def update_extra(self, extra, params, outputs, step):
        """The extra state after an applied update (`params` are the new ones)."""
        return extra

    def metrics(self, terms: dict, normalizer, step) -> dict:
        return {"loss": terms["loss_sum"] / normalizer}

    def warnings(self, metrics: dict) -> list[str]:
        """What the log should warn of, given this objective's metrics averaged over a log window
        (without the `<name>/` prefix): e.g. sentence vectors that collapsed to one."""
        return []

    # -- cost -----------------------------------------------------------------------------------
    def flops(self) -> dict[str, float]:
        """Model FLOPs of one step of this objective, by part (e.g. a forward-only key encoder
        on its own line), for MFU."""
        raise NotImplementedError

    def tokens_per_step(self) -> int:
        """Input tokens the trained model reads per step (for tokens/s)."""
        return self.batch_size * self.config.data.seq_len
