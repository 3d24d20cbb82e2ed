"""Held-out masked-LM loss and accuracy per language, on the run's own held-out text.

The pretraining corpus keeps `data.eval_sentences_per_language` lines per language out
of training (xlm_jax/data/pipeline.py); whoever runs the evaluation passes their
batches as `context.heldout`, a function params -> {language: {"loss", "accuracy"}}
(xlm_jax/train/heldout.py). For MLM quality on any other text file, use the
`pseudo_perplexity` evaluator.
"""
import numpy as np

from xlm_jax.errors import ConfigError
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result, register


@register
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
