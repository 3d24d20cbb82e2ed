"""Held-out masked-LM loss and accuracy per language, on the run's own held-out text.

The pretraining corpus keeps `data.eval_sentences_per_language` lines per language out
of training (xlm_jax/data/pipeline.py). Whoever has the corpus (the train loop,
`--mode=evaluate` on a run directory) hands the evaluators a `HeldoutText` as
`context.heldout`: those lines batched once, and the masked-LM loss on them. For MLM
quality on any other text file, use the `pseudo_perplexity` evaluator.
"""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.data.pipeline import eval_batches
from xlm_jax.errors import ConfigError
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.objectives.mlm import mlm_loss_terms
from xlm_jax.parallel.mesh import batch_sharding, on_mesh
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


def masked_lm_loss_step(model_config, mesh, rules, params_shardings, rows):
    """eval(params, batch) -> loss_sum, correct, count of masked LM over the batch (no dropout)."""
    model = MaskedLM(model_config)

    def evaluate(params, batch):
        extra = {"language_ids": batch["language_ids"]} if "language_ids" in batch else {}
        logits = model.apply({"params": params}, batch["input_ids"], batch["masked_positions"],
                             deterministic=True, **extra)
        return mlm_loss_terms(logits, batch["masked_ids"], batch["masked_weights"])

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(on_mesh(evaluate, mesh, rules), in_shardings=(params_shardings, rows),
                   out_shardings=replicated)


class HeldoutText:
    """This process' held-out batches of a prepared corpus per evaluated language, built once,
    and the masked-LM loss on them: heldout(params) -> {language: {"loss", "accuracy"}}."""

    def __init__(self, data, config, mesh, rules, params_shardings):
        self.rows = batch_sharding(mesh, rules)
        self.step = masked_lm_loss_step(config.model, mesh, rules, params_shardings, self.rows)
        self.sets = {language: eval_batches(data, config, data.languages.index(language))
                     for language in eval_languages(data, config)}

    def __call__(self, params) -> dict:
        results = {}
        for language, batches in self.sets.items():
            totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
            for batch in batches:
                terms = jax.device_get(self.step(params, to_global(batch, self.rows)))
                totals = {k: totals[k] + float(terms[k]) for k in totals}
            count = max(totals["count"], 1.0)
            results[language] = {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count}
        return results


class HeldoutMLM(Evaluator):
    kind = "mlm"
    needs_pretraining_corpus = True

    def evaluate(self, context: EvalContext) -> Result:
        if context.heldout is None:
            raise ConfigError(f"config field `{self.field('kind')}`: the held-out MLM evaluation needs the "
                              "run's pretraining corpus (train, or --mode=evaluate on a run directory with its "
                              "corpus); for MLM quality on any text file use kind=\"pseudo_perplexity\"")
        per_language = context.heldout(context.subject.params)
        summary = {f"mean_{k}": float(np.mean([r[k] for r in per_language.values()]))
                   for k in ("loss", "accuracy")} if per_language else {}
        return Result(per_language=per_language, summary=summary)
