"""Where translations meet: layer-by-layer similarity of translation pairs (Wu, Conneau et al. 2020).

"Emerging cross-lingual structure in pretrained language models" (ACL 2020) analyses *where*
in the network a sentence and its translation look alike. For translation pairs (Tatoeba:
a language xx and English) we mean-pool every hidden state [embeddings, layer 1, ..., layer L]
of both sides (one `context.encode` call per side) and report, per layer and language:

- linear CKA (Kornblith et al. 2019) between the two sides' [N, H] matrices: invariant to
  rotations and isotropic scaling of either side, so it compares the geometry of the two sets
  of sentences without needing them to share coordinates;
- retrieval accuracy@1 (cosine nearest neighbour, xx -> en, as XTREME's Tatoeba) on the pairs
  after the first `fit_fraction`, as is and after an orthogonal (Procrustes) map W = U V^T fit
  on the first `fit_fraction` of pairs (X_fit^T Y_fit = U S V^T): how much of the gap between
  the languages is a rotation. With fewer fit pairs than hidden dimensions (500 pairs, 768 dims
  for a base model) the map is only determined on the span of the fit sentences; sentence
  vectors have a low effective rank, so that span holds most of what is there to map.

The paper finds translations most similar (CKA) in the middle / upper-middle layers, less at
the embeddings. `cka_between` compares two models on the same sentences (every layer pair),
as the paper does for independently trained monolingual models; with option `compare_with`
(another run directory, or "hf:DIR") the evaluator also reports it, for every layer of this
model against every layer of that one, on the same sentences (both sides of the pairs): the
diagonal as `cka_vs_other_layer_<k>`, the whole matrix in details and as a heatmap.

Inputs are read as the retrieval evaluator reads them (options `data`, `languages`): a
Tatoeba directory (tatoeba.<xxx>-eng.{<xxx>,eng}; `languages` "deu,fra", "" = the XTREME
languages there), "a.de|b.en" line-aligned file pairs or <src>-<tgt>.tsv files; the English
side is the "en" of xx -> en. The first `max_pairs` pairs of each language are used (0 = all).
"""
import dataclasses
import functools
import os

import numpy as np

from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import plots
from xlm_jax.evaluation.encoding import make_context
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.evaluation.parallel_data import ParallelSet, read_parallel_sets
from xlm_jax.evaluation.retrieval import retrieval_accuracy
from xlm_jax.evaluation.subjects import load_subject


def _centered(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x, y) -> float:
    """Linear CKA of x [N, Hx] and y [N, Hy] (rows: the same N examples), in float64.

    With centered columns, ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) (Kornblith et al. 2019, eq. 5).
    """
    x, y = _centered(x), _centered(y)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"linear_cka needs two [N, H] matrices of the same N >= 2 rows; got {x.shape} and {y.shape}")
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if denominator == 0.0:
        raise ValueError("linear_cka: one representation is constant over the examples; CKA is undefined")
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator)


def cka_between(a_vectors, b_vectors) -> np.ndarray:
    """[La, Lb] linear CKA of every layer of a [La, N, Ha] with every layer of b [Lb, N, Hb].

    For two models encoding the *same* N sentences, e.g. `context.encode(texts, layers=...)` of
    each: which layers of one correspond to which of the other (Wu et al. 2020, section 5).
    """
    return np.array([[linear_cka(a, b) for b in b_vectors] for a in a_vectors])


def procrustes(x, y) -> np.ndarray:
    """The orthogonal W [Hx, Hy] minimizing ||x W - y||_F: U V^T from x^T y = U S V^T (Schoenemann 1966)."""
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64).T @ np.asarray(y, np.float64), full_matrices=False)
    return u @ vt


def layer_scores(xx_layers, en_layers, fit_count: int) -> dict[str, list[float]]:
    """Per layer: CKA over all pairs; accuracy@1 (xx -> en) on pairs [fit_count:], without and with
    the Procrustes map fit on pairs [:fit_count]."""
    scores = {"cka": [], "acc": [], "procrustes_acc": []}
    for x, y in zip(xx_layers, en_layers):
        w = procrustes(x[:fit_count], y[:fit_count])
        scores["cka"].append(linear_cka(x, y))
        mapped = np.asarray(x[fit_count:], np.float64) @ w
        scores["acc"].append(retrieval_accuracy(x[fit_count:], y[fit_count:])["acc_xx_to_en"])
        scores["procrustes_acc"].append(retrieval_accuracy(mapped, y[fit_count:])["acc_xx_to_en"])
    return scores


class Alignment(Evaluator):
    kind = "alignment"

    @classmethod
    def defaults(cls) -> dict:
        return {"data": "", "languages": "", "max_pairs": 1000, "fit_fraction": 0.5, "compare_with": ""}

    def check(self) -> None:
        self.pair_sets  # noqa: B018  (reads and validates every input)

    def languages_used(self) -> list[str]:
        return list(dict.fromkeys(code for s in self.pair_sets for code in (s.source_language, s.target_language)))

    @functools.cached_property
    def pair_sets(self) -> list[ParallelSet]:
        """The translation pairs, read as the retrieval evaluator reads them, cut to max_pairs."""
        o = self.options
        if not o.data:
            raise ConfigError(f"{self.field('data')} is not set: give a Tatoeba directory, "
                              "'a.de|b.en' file pairs or <src>-<tgt>.tsv files")
        if o.max_pairs and o.max_pairs < 4:
            raise ConfigError(f"{self.field('max_pairs')}: {o.max_pairs}; need at least 4 pairs (some to fit "
                              "the Procrustes map, some to test it), or 0 for all")
        if not 0.0 < o.fit_fraction < 1.0:
            raise ConfigError(f"{self.field('fit_fraction')}: {o.fit_fraction}; must be between 0 and 1 (exclusive)")
        try:
            sets = read_parallel_sets(o.data, o.languages)
        except ConfigError as error:
            raise ConfigError(f"{self.field('data')} / {self.field('languages')}: {error}") from None
        limit = o.max_pairs or None
        sets = [dataclasses.replace(s, source=s.source[:limit], target=s.target[:limit]) for s in sets]
        for pair_set in sets:
            self._fit_count(pair_set)   # enough pairs on both sides of the split
        return sets

    def _fit_count(self, pair_set: ParallelSet) -> int:
        n = len(pair_set.source)
        fit = round(n * self.options.fit_fraction)
        if fit < 2 or n - fit < 2:
            raise DataError(f"{pair_set.files[0] if pair_set.files else self.options.data}: {n} translation pairs for {pair_set.language}; with "
                            f"{self.field('fit_fraction')}={self.options.fit_fraction} that leaves fewer "
                            "than 2 pairs to fit or to test the Procrustes map")
        return fit

    def evaluate(self, context: EvalContext) -> Result:
        num_layers = context.subject.model_config.num_layers
        layers = tuple(range(num_layers + 1))
        curves, details = {}, {"layers": list(layers), "pairs": {}, "fit_pairs": {}, "chance_acc": {}}
        for pair_set in self.pair_sets:
            fit = self._fit_count(pair_set)
            context.log(f"{self.name}: {pair_set.language}: {len(pair_set.source)} pairs, {len(layers)} layers")
            xx = context.encode(pair_set.source, layers=layers, language=pair_set.source_language)
            en = context.encode(pair_set.target, layers=layers, language=pair_set.target_language)
            curves[pair_set.language] = layer_scores(xx, en, fit)
            details["pairs"][pair_set.language], details["fit_pairs"][pair_set.language] = len(pair_set.source), fit
            details["chance_acc"][pair_set.language] = 1.0 / (len(pair_set.source) - fit)
        per_language = {lang: {f"{metric}_layer_{k}": value for metric, values in scores.items()
                               for k, value in zip(layers, values)} for lang, scores in curves.items()}
        means = {metric: np.mean([scores[metric] for scores in curves.values()], axis=0).tolist()
                 for metric in ("cka", "acc", "procrustes_acc")}
        summary = {}
        for metric, mean in means.items():
            best = int(np.argmax(mean))
            summary[f"best_{metric}_layer"], summary[f"best_mean_{metric}"] = float(best), mean[best]
            summary[f"mean_{metric}_embeddings"] = mean[0]
        details.update(curves=curves, mean=means)
        artifacts = self._plots(context, layers, curves, means)
        if self.options.compare_with:
            between = self._against_other_model(context, layers)
            details["cka_vs_other"] = between.tolist()
            summary.update({f"cka_vs_other_layer_{k}": float(between[k, k])
                            for k in layers if k < between.shape[1]})
            artifacts += self._between_plot(context, between)
        return Result(per_language=per_language, summary=summary, details=details,
                      data_files=[f for pair_set in self.pair_sets for f in pair_set.files],
                      artifacts=artifacts)

    def _against_other_model(self, context: EvalContext, layers) -> np.ndarray:
        """[this model's layers, the other's layers] CKA on the same sentences, each model with its
        own tokenizer (and each side in its language)."""
        subject = context.subject
        other = load_subject(self.options.compare_with, subject.mesh, subject.rules, context.log)
        texts = [t for pair_set in self.pair_sets for t in pair_set.source + pair_set.target]
        languages = [code for s in self.pair_sets
                     for code in [s.source_language] * len(s.source) + [s.target_language] * len(s.target)]
        context.log(f"{self.name}: CKA against {self.options.compare_with} on {len(texts)} sentences")
        theirs = make_context(other).encode(texts, layers=tuple(range(other.model_config.num_layers + 1)),
                                            language=languages)
        return cka_between(context.encode(texts, layers=layers, language=languages), theirs)

    def _between_plot(self, context: EvalContext, between: np.ndarray) -> list[str]:
        if context.artifacts_dir is None:
            return []
        name = f"{self.name}_cka_vs_other.png"
        plots.heatmap(os.path.join(context.artifacts_dir, name), f"linear CKA: this model vs {self.options.compare_with}",
                      between, [f"ours {k}" for k in range(len(between))],
                      [str(k) for k in range(between.shape[1])])
        return [name]

    def _plots(self, context: EvalContext, layers, curves, means) -> list[str]:
        if context.artifacts_dir is None:
            return []
        labels = ["emb"] + [str(k) for k in layers[1:]]
        cka_name, acc_name = f"{self.name}_cka.png", f"{self.name}_retrieval_by_layer.png"
        plots.heatmap(os.path.join(context.artifacts_dir, cka_name), "linear CKA of translation pairs",
                      [curves[lang]["cka"] for lang in curves], list(curves), labels)
        plots.line_chart(os.path.join(context.artifacts_dir, acc_name),
                         f"retrieval acc@1 xx->en (mean of {len(curves)} languages)",
                         {"as is": (list(layers), means["acc"]),
                          "after Procrustes": (list(layers), means["procrustes_acc"])},
                         xlabel="layer (0 = embeddings)", ylabel="accuracy@1")
        return [cka_name, acc_name]
