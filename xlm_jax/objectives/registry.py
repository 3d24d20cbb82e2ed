"""Objectives by name: their checks and the active set of a config (defaults: xlm_jax/config.py).

The same style as the evaluators' registry: a dict from name to class, written out here.

`config.objectives.<name>` is each objective's weight (0 = off); `config.<name>` its options;
`config.objective_schedule` how they mix: "sum" (InfoXLM: every update sums one batch of
every active objective) or "alternate" (XLM: update t trains the objectives of batch
t mod K only, K the number of distinct batches).
"""
import jax

from xlm_jax.data.shards import num_shards
from xlm_jax.data.streams import check_schedule, check_streams
from xlm_jax.errors import ConfigError
from xlm_jax.objectives.adversarial import LanguageAdversarial
from xlm_jax.objectives.base import Objective
from xlm_jax.objectives.mlm import MaskedLanguageModel, TranslationLanguageModel
from xlm_jax.objectives.pair_classification import TranslationPairClassification
from xlm_jax.objectives.xlco import CrossLingualContrast

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (
    MaskedLanguageModel, TranslationLanguageModel, CrossLingualContrast, LanguageAdversarial,
    TranslationPairClassification)}


def check_objectives(config) -> None:
    """Known names, non-negative weights, at least one objective on, each one's options, the schedule."""
    weights = config.objectives
    unknown = sorted(set(weights) - set(OBJECTIVES))
    if unknown:
        raise ConfigError(f"config field `objectives`: unknown objective(s) {', '.join(unknown)}; known: "
                          f"{', '.join(OBJECTIVES)}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"config field `objectives.{name}`: got {weight!r}; a weight is a number >= 0 "
                              "(0 = off)")
    if not any(weights.values()):
        raise ConfigError("config field `objectives`: every weight is 0; turn one on, e.g. "
                          "--config.objectives.mlm=1")
    check_schedule(config.objective_schedule)
    for name, cls in OBJECTIVES.items():
        if name not in config:
            raise ConfigError(f"config field `{name}`: section is missing (start from "
                              "xlm_jax.config.default_config())")
        unknown = sorted(set(config[name]) - set(cls.defaults()))
        if unknown:
            raise ConfigError(f"config field `{name}.{unknown[0]}`: unknown option; {name} has "
                              f"{', '.join(cls.defaults())}")
        size = config[name].batch_size
        cls.require(isinstance(size, int) and size >= 0, "batch_size",
                    f"got {size!r}; a number of rows >= 0 (0 = train.batch_size)")
        if weights.get(name, 0):
            cls.check(config)
    check_streams(streams(build_objectives(config)), num_shards(config))   # every batch splits over the shards


def build_objectives(config, languages: list[str] | None = None) -> list[Objective]:
    """The active objectives, in OBJECTIVES order (MLM first); `languages` are the corpus's
    (None before it is read: enough to know the streams, not to make heads)."""
    return [cls(config, config.objectives.get(name, 0.0), languages) for name, cls in OBJECTIVES.items()
            if config.objectives.get(name, 0.0)]


def streams(objectives: list[Objective]):
    """The data streams the objectives read: one per distinct batch."""
    return [o.stream() for o in objectives if o.batch_name == o.name]


def init_heads(objectives: list[Objective], rng) -> dict:
    """{name: boxed head params} of the objectives that have a trainable head."""
    heads = {o.name: o.init_head(jax.random.fold_in(rng, i)) for i, o in enumerate(objectives)}
    return {name: head for name, head in heads.items() if head is not None}


def init_extra(objectives: list[Objective], params) -> dict:
    """{name: extra state} of the objectives that keep some (TrainState.extra)."""
    extra = {o.name: o.init_extra(params) for o in objectives}
    return {name: value for name, value in extra.items() if value is not None}
