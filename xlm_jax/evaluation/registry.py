"""Every evaluator kind, and building the configured ones from `config.evals`.

Importing this module registers all kinds; `build_evaluators` turns the `config.evals`
entries into Evaluator instances with complete, checked options.
"""
import ml_collections

from xlm_jax.errors import ConfigError
from xlm_jax.evaluation import (  # noqa: F401  (each module registers its kinds)
    alignment, classification, data_transfer, heldout_mlm, perplexity, retrieval, tagging, word_translation)
from xlm_jax.evaluation.evaluator import COMMON_OPTIONS, EVALUATORS, Evaluator


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
