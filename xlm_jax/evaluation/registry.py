"""Evaluators by kind, and building the configured ones from `config.evals`.

The same style as the objectives' registry: a dict from name to class, written out here;
an evaluator defined outside xlm_jax joins it with `register`. `build_evaluators` turns the
`config.evals` entries into Evaluator instances with complete, checked options: each kind's
options are checked by the kind (its defaults' types here, `Evaluator.check` on its inputs).
"""
import ml_collections

from xlm_jax.errors import ConfigError
from xlm_jax.evaluation.alignment import Alignment
from xlm_jax.evaluation.classification import XNLI
from xlm_jax.evaluation.data_transfer import DataTransfer
from xlm_jax.evaluation.evaluator import COMMON_OPTIONS, Evaluator
from xlm_jax.evaluation.heldout_mlm import HeldoutMLM
from xlm_jax.evaluation.perplexity import PseudoPerplexity
from xlm_jax.evaluation.retrieval import Retrieval
from xlm_jax.evaluation.tagging import NamedEntities, PartOfSpeech
from xlm_jax.evaluation.word_translation import WordTranslation

EVALUATORS: dict[str, type[Evaluator]] = {cls.kind: cls for cls in (
    HeldoutMLM, PseudoPerplexity, Retrieval, WordTranslation, Alignment, XNLI, PartOfSpeech, NamedEntities,
    DataTransfer)}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    """Adds an evaluator class defined elsewhere as `config.evals.<name>.kind = cls.kind` (usable
    as a class decorator)."""
    if cls.kind in EVALUATORS:
        raise ValueError(f"evaluator kind {cls.kind!r} registered twice")
    EVALUATORS[cls.kind] = cls
    return cls


def evaluator_options(kind: str, **overrides) -> ml_collections.ConfigDict:
    """A complete options ConfigDict for `kind`: COMMON_OPTIONS, the kind's defaults, overrides."""
    options = {**COMMON_OPTIONS, **EVALUATORS[kind].defaults(), "kind": kind}
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise ConfigError(f"evaluator {kind!r} has no option(s) {', '.join(unknown)}; "
                          f"its options: {', '.join(sorted(options))}")
    options.update(overrides)
    return ml_collections.ConfigDict(options)



def _check_type(field: str, value, default) -> None:
    expected = type(default)
    ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
    if isinstance(value, bool) != isinstance(default, bool):
        ok = False
    if not ok:
        raise ConfigError(f"config field `{field}`: got {value!r}; must be a {expected.__name__} "
                          f"(default {default!r})")


def build_evaluators(evals: ml_collections.ConfigDict, names=None) -> list[Evaluator]:
    """The evaluators of `config.evals` (or only `names` of them), options checked and completed."""
    if names:
        unknown = [n for n in names if n not in evals]
        if unknown:
            raise ConfigError(f"--evals: no evaluator {', '.join(unknown)} in config.evals; configured: "
                              f"{', '.join(evals) or '(none)'}")
    evaluators = []
    for name in (names or list(evals)):
        entry = evals[name]
        if not isinstance(entry, (ml_collections.ConfigDict, dict)):
            raise ConfigError(f"config field `evals.{name}`: must be a ConfigDict of options, got {entry!r}")
        kind = entry.get("kind") or name
        if kind not in EVALUATORS:
            raise ConfigError(f"config field `evals.{name}.kind`: no evaluator kind {kind!r}; "
                              f"kinds: {', '.join(sorted(EVALUATORS))}")
        defaults = {**COMMON_OPTIONS, **EVALUATORS[kind].defaults()}
        unknown = sorted(set(entry) - set(defaults))
        if unknown:
            raise ConfigError(f"config field `evals.{name}.{unknown[0]}`: evaluator kind {kind!r} has no "
                              f"such option; its options: {', '.join(sorted(defaults))}")
        options = dict(defaults)
        for key, value in entry.items():
            _check_type(f"evals.{name}.{key}", value, defaults[key])
            options[key] = value
        options["kind"] = kind
        if options["every_steps"] < 0:
            raise ConfigError(f"config field `evals.{name}.every_steps`: got {options['every_steps']}; "
                              "must be >= 0 (0 = only when asked to evaluate)")
        evaluators.append(EVALUATORS[kind](name, ml_collections.ConfigDict(options)))
    return evaluators
