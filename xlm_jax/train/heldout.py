"""Held-out masked-LM loss and accuracy per language, the loss the run watches as it trains."""
import jax
import numpy as np

from xlm_jax.data.pipeline import eval_batches
from xlm_jax.errors import ConfigError
from xlm_jax.parallel.multihost import to_global


def eval_languages(data, config) -> list[str]:
    """`data.eval_languages`, or up to `data.max_eval_languages` spread over the size ranking,
    so that high- and low-resource languages are both watched."""
    d = config.data
    candidates = data.evaluated
    wanted = [lang.strip() for lang in d.eval_languages.split(",") if lang.strip()]
    if wanted:
        unknown = sorted(set(wanted) - set(candidates))
        if unknown:
            raise ConfigError(f"config field `data.eval_languages`: no held-out text for "
                              f"{', '.join(unknown)}; languages with held-out text: "
                              f"{', '.join(candidates)}")
        return wanted
    if not d.max_eval_languages or len(candidates) <= d.max_eval_languages:
        return candidates
    by_size = sorted(candidates, key=lambda lang: (-data.counts[lang], lang))
    picks = np.linspace(0, len(by_size) - 1, d.max_eval_languages).round().astype(int)
    return sorted(by_size[i] for i in picks)


def eval_sets(data, config) -> dict[str, list[dict]]:
    """This process' held-out batches per evaluated language, built once per run."""
    sets = {}
    for language in eval_languages(data, config):
        sets[language] = eval_batches(data, config, data.languages.index(language))
    return sets


def evaluate_languages(eval_step, params, sets: dict, sharding) -> dict:
    """Held-out masked-LM loss and accuracy per language."""
    results = {}
    for language, batches in sets.items():
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        for batch in batches:
            terms = jax.device_get(eval_step(params, to_global(batch, sharding)))
            totals = {k: totals[k] + float(terms[k]) for k in totals}
        count = max(totals["count"], 1.0)
        results[language] = {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count}
    return results
