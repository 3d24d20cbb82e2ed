"""Word translation between languages with ids of their own (Dufter & Schuetze, EMNLP 2020).

With data.language_id_ranges every language has its own copy of the base tokenizer's ordinary
ids: base piece b is id 4 + i * P + (b - 4) in language i, so the same piece in two languages
has two ids that nothing ties together but training (their "Fake-English" is English under a
second language name). For each of the first `max_words` ordinary base ids (0 = all P), the
nearest neighbour by cosine of its vector in one language among the other language's is its
translation when it is the same base piece: precision@1 each way (`p1_xx_to_en`, `p1_en_to_xx`)
and their mean `p1`. Chance is 1 / words.

A word's vector is its hidden state when it is fed alone, `<s> w </s>` in its language (that
language's specials and language id), at the layers of option `layer` (0 = the embedding
output: word + position embeddings, LayerNorm), as the paper's evaluate.py does for every
vocabulary entry. A model with a shared vocabulary gives both languages the same ids, so the
task does not exist there and the evaluation says so.
"""
import os

import numpy as np

from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import plots
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.evaluation.retrieval import headline, layers_of, parse_layer_spec, retrieval_accuracy

DIRECTIONS = {"acc_xx_to_en": "p1_xx_to_en", "acc_en_to_xx": "p1_en_to_xx"}   # retrieval's names -> ours


def translation_precision(source: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Precision@1 of cosine nearest neighbours both ways, row i of each side being word i; and their mean."""
    metrics = {DIRECTIONS[key]: value for key, value in retrieval_accuracy(source, target).items()}
    metrics["p1"] = float(np.mean(list(metrics.values())))
    return metrics


class WordTranslation(Evaluator):
    """Precision@1 of word i of one language against word i of the other (see the module docstring)."""
    kind = "word_translation"

    @classmethod
    def defaults(cls) -> dict:
        return {
            "languages": "",      # "qfe-en": the two run languages, src-tgt (tgt is the "en" of the names)
            "layer": "0,middle",  # as retrieval: "middle", an index, or several ("0,2,4"); the first is headline
            "max_words": 0,       # the first N ordinary ids of the base tokenizer; 0 = all of them
        }

    def check(self) -> None:
        self.pair()
        try:
            parse_layer_spec(self.options.layer)
        except ValueError as error:
            raise ConfigError(f"config field `{self.field('layer')}`: {error}") from None
        if self.options.max_words < 0 or self.options.max_words == 1:
            raise ConfigError(f"config field `{self.field('max_words')}`: {self.options.max_words}; 0 (every "
                              "word) or at least 2 (a nearest neighbour needs a choice)")

    def pair(self) -> tuple[str, str]:
        """(source, target) of option `languages`."""
        pair = tuple(code.strip() for code in self.options.languages.split("-"))
        if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
            raise ConfigError(f"config field `{self.field('languages')}`: {self.options.languages!r}; name two "
                              "of the run's languages as src-tgt, e.g. \"qfe-en\"")
        return pair

    def languages_used(self) -> list[str]:
        return list(self.pair())

    def _layers(self, num_layers: int) -> tuple[int, ...]:
        try:
            return layers_of(self.options.layer, num_layers)
        except ValueError as error:
            raise ConfigError(f"config field `{self.field('layer')}`: {error}") from None

    def evaluate(self, context: EvalContext) -> Result:
        tokenizer = context.subject.tokenizer
        if not tokenizer.languages:
            raise DataError(f"evaluator `{self.name}` (word_translation) pairs word i of one language with word "
                            "i of the other, which needs languages with ids of their own: this model shares its "
                            "vocabulary between languages (train with data.language_id_ranges=True)")
        source, target = self.pair()
        layers = self._layers(context.subject.model_config.num_layers)
        words = tokenizer.range_size if not self.options.max_words else min(self.options.max_words,
                                                                             tokenizer.range_size)
        base = np.arange(4, 4 + words)
        vectors = [self._word_vectors(context, language, base, layers) for language in (source, target)]
        per_layer = {layer: {source: translation_precision(vectors[0][j], vectors[1][j])}
                     for j, layer in enumerate(layers)}
        per_language, summary = headline(per_layer, layers, "p1", [*DIRECTIONS.values(), "p1"])
        context.log(f"{self.name}: {source}-{target}, {words} words: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in per_language[source].items()))
        details = {"layers": list(layers), "words": words,
                   "per_layer": {str(layer): per_layer[layer] for layer in layers}}
        chance = {source: {metric: 1.0 / words for metric in per_language[source]}}   # the right word by luck
        return Result(per_language=per_language, summary=summary, details=details, chance=chance,
                      artifacts=self._plot(context, per_layer, source))

    def _word_vectors(self, context: EvalContext, language: str, base: np.ndarray, layers) -> np.ndarray:
        """[layers, words, hidden]: each word alone, `<s> w </s>` in `language`, its own state."""
        inputs = context.inputs(language)
        tok = inputs.tokenizer
        rows = [np.array([tok.bos_id, token, tok.eos_id], np.int32) for token in tok.from_base(base)]
        return context.encoder.encode_rows(context.subject.params, rows, layers, "inner", inputs.language_id)

    def _plot(self, context: EvalContext, per_layer: dict, source: str) -> list[str]:
        if context.artifacts_dir is None or len(per_layer) < 2:
            return []
        layers = sorted(per_layer)
        name = f"{self.name}_p1_by_layer.png"
        plots.line_chart(os.path.join(context.artifacts_dir, name), f"{self.name}: word translation p@1 by layer",
                         {source: (layers, [per_layer[layer][source]["p1"] for layer in layers])},
                         xlabel="layer (0 = embeddings)", ylabel="precision@1")
        return [name]
