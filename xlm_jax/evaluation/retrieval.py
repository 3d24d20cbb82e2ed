"""Sentence retrieval (Tatoeba) and bitext mining (BUCC style) on parallel sentences.

Nothing is trained: both modes measure how language-neutral the pretrained sentence
vectors are, as XTREME does (Hu et al. 2020, sections 3 and 4).

Sentence vectors: the mean of one layer's token states, padding excluded ("mean"
pooling, XTREME's choice for both tasks; option `pooling="first"` takes `<s>`, "inner" the
mean without the `<s>` and `</s>` around every sentence, as Dufter & Schuetze 2020 pool), by
default the middle layer (`encoding.middle_layer`: layer 7 of a 12-layer model, 0 being
the embeddings), L2-normalized. Several layers ("0,2,4") are evaluated in one encoding
pass; the first one listed gives the headline numbers.

Retrieval (`mode="retrieval"`, Tatoeba): for each of the first `max_pairs` aligned
pairs, the nearest sentence of the other side by cosine. acc_xx_to_en = share of
non-English sentences whose nearest English sentence is their translation, acc_en_to_xx
the reverse (XTREME's number: it indexes the non-English side and queries it with the
English sentences), acc their mean. Chance is 1/pairs.

Mining (`mode="mining"`, BUCC 2018 style; LASER, Artetxe & Schwenk 2019): gold pairs
hidden among sentences that have no translation on the other side. From line-aligned
data: lines [0, g) are the gold pairs, the sources of lines [g, g+d) and the targets of
lines [g+d, g+2d) are the `distractors` (d per side; their counterparts are dropped).
Pairs are scored by the ratio margin
    margin(x, y) = cos(x, y) / (mean cos of x to its k nearest y / 2 + mean cos of y to its k nearest x / 2)
which discounts "hub" sentences close to everything. Candidates are LASER's
`--retrieval max` (what its BUCC scripts and XTREME use): every x's and every y's best
partner by margin among its k nearest neighbours by cosine (the union of forward and
backward), taken greedily by decreasing score so that each sentence is used once.
BUCC tunes the score threshold on its training split; offline we split the mining set
in two disjoint halves (even / odd positions of the gold pairs and of the distractors),
mine each half separately, choose the threshold that maximizes F1 on the first half
(LASER's bucc.py optimization) and report precision / recall / F1 on the second.

Inputs (option `data`, auto-detected): a Tatoeba directory (tatoeba.<xxx>-eng.<xxx> and
tatoeba.<xxx>-eng.eng); line-aligned files "a.de|b.en"; `<src>-<tgt>.tsv` files with
two columns; several pairs or TSVs comma-separated. The English side (a language named
en/eng, else the second side) is the "en" of the metric names.
"""
import os
import re

import numpy as np

from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import plots
from xlm_jax.evaluation.encoding import POOLINGS, middle_layer, resolve_layers
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.evaluation.parallel_data import ParallelSet, read_parallel_sets

MODES = ("retrieval", "mining")
DIRECTIONS = ("acc_xx_to_en", "acc_en_to_xx")


# ---------------------------------------------------------------- scoring: pure functions of vectors


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, in float64 (cheap at these sizes, and no near-ties from rounding)."""
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def cosine_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cos(x_i, y_j) of all pairs [len(x), len(y)]."""
    return _unit_rows(x) @ _unit_rows(y).T


def nearest_neighbours(queries: np.ndarray, index: np.ndarray, block: int = 1024) -> np.ndarray:
    """For each query row, the index row of highest cosine (the first of ties); in blocks of query
    rows, so memory stays block x len(index) for TSVs of 10,000s of pairs."""
    queries, index = _unit_rows(queries), _unit_rows(index)
    return np.concatenate([(queries[start:start + block] @ index.T).argmax(1)
                           for start in range(0, len(queries), block)])


def retrieval_accuracy(source: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Accuracy@1 of cosine nearest-neighbour search both ways; row i of each side is a pair."""
    gold = np.arange(len(source))
    return {"acc_xx_to_en": float(np.mean(nearest_neighbours(source, target) == gold)),
            "acc_en_to_xx": float(np.mean(nearest_neighbours(target, source) == gold))}


def _nearest_mean(cos: np.ndarray, k: int) -> np.ndarray:
    """For each row, the mean of its k largest entries (k capped by the row length)."""
    k = min(k, cos.shape[1])
    return np.partition(cos, -k, axis=1)[:, -k:].mean(1)


def ratio_margin(cos: np.ndarray, k: int) -> np.ndarray:
    """Artetxe & Schwenk's ratio margin of every pair, from the cosine matrix [len(x), len(y)]."""
    x_neighbourhood, y_neighbourhood = _nearest_mean(cos, k), _nearest_mean(cos.T, k)
    return cos / (x_neighbourhood[:, None] / 2 + y_neighbourhood[None, :] / 2)


def margin_scores(x: np.ndarray, y: np.ndarray, k: int = 4) -> np.ndarray:
    """Ratio-margin scores [len(x), len(y)] of two sets of sentence vectors."""
    return ratio_margin(cosine_matrix(x, y), k)


def _best_by_margin(cos: np.ndarray, margin: np.ndarray, k: int) -> np.ndarray:
    """For each row, the column with the highest margin among its k nearest by cosine (as LASER)."""
    k = min(k, cos.shape[1])
    nearest = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(cos))[:, None]
    return nearest[np.arange(len(cos)), margin[rows, nearest].argmax(1)]


def mine_candidates(x: np.ndarray, y: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """LASER's `--mode mine --retrieval max`: (pairs [n, 2] of (x row, y row), scores [n]),
    highest score first, each x and each y in at most one pair."""
    cos = cosine_matrix(x, y)
    margin = ratio_margin(cos, k)
    forward, backward = _best_by_margin(cos, margin, k), _best_by_margin(cos.T, margin.T, k)
    pairs = np.concatenate([np.stack([np.arange(len(x)), forward], 1),
                            np.stack([backward, np.arange(len(y))], 1)])
    scores = margin[pairs[:, 0], pairs[:, 1]]
    kept, seen_x, seen_y = [], set(), set()
    for i in np.argsort(-scores, kind="stable"):
        if pairs[i, 0] not in seen_x and pairs[i, 1] not in seen_y:
            seen_x.add(pairs[i, 0])
            seen_y.add(pairs[i, 1])
            kept.append(i)
    return pairs[kept], scores[kept]


def best_threshold(scores: np.ndarray, correct: np.ndarray, num_gold: int) -> float:
    """The threshold (accept score >= it) with the best F1, midway to the next lower score, as
    LASER's bucc.py chooses it; ties are accepted or rejected together. scores: highest first."""
    tp = np.cumsum(correct)
    f1 = 2 * tp / (np.arange(1, len(scores) + 1) + num_gold)     # = 2PR / (P + R)
    end_of_ties = np.r_[scores[1:] != scores[:-1], True]
    best = int(np.argmax(np.where(end_of_ties, f1, -1.0)))
    return float((scores[best] + scores[best + 1]) / 2 if best + 1 < len(scores) else scores[best])


def precision_recall_f1(scores: np.ndarray, correct: np.ndarray, num_gold: int,
                        threshold: float) -> dict[str, float]:
    """Of the candidates scoring >= threshold: the share that is gold, and the share of gold found."""
    accepted = scores >= threshold
    tp = float(np.sum(correct[accepted]))
    precision = tp / max(int(accepted.sum()), 1)
    recall = tp / num_gold
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def mining_metrics(dev: tuple, test: tuple, k: int) -> dict[str, float]:
    """Threshold from the dev half, precision/recall/F1 on the test half. Each half is
    (x vectors, y vectors, g): rows i < g of x and y are the gold pairs, the others distractors."""
    def candidates(x, y, num_gold):
        pairs, scores = mine_candidates(x, y, k)
        return scores, (pairs[:, 0] == pairs[:, 1]) & (pairs[:, 0] < num_gold), num_gold

    dev_candidates, test_candidates = candidates(*dev), candidates(*test)
    threshold = best_threshold(*dev_candidates)
    dev_f1 = precision_recall_f1(*dev_candidates, threshold)["f1"]
    return {**precision_recall_f1(*test_candidates, threshold), "threshold": threshold, "f1_dev": dev_f1}


def mining_halves(source: list, target: list, gold: int, distractors: int) -> list[tuple[list, list, int]]:
    """The two disjoint halves (source sentences, target sentences, gold count) of the mining set
    built from aligned lines: gold pairs first, then the unpaired distractors of each side."""
    gold_lines = np.arange(gold)
    source_only = np.arange(gold, gold + distractors)
    target_only = np.arange(gold + distractors, gold + 2 * distractors)
    halves = []
    for half in (0, 1):
        pairs = gold_lines[half::2]
        halves.append(([source[i] for i in np.r_[pairs, source_only[half::2]]],
                       [target[i] for i in np.r_[pairs, target_only[half::2]]], len(pairs)))
    return halves


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_layer_spec(spec: str) -> list:
    """"middle", an int, or a comma list of them -> ["middle" | int, ...] (resolved per model later)."""
    items = _split_list(spec)
    if not items or not all(item == "middle" or re.fullmatch(r"-?\d+", item) for item in items):
        raise ValueError(f"{spec!r}: use 'middle', a layer index (0 = embeddings, -1 = last) or a comma list")
    return [item if item == "middle" else int(item) for item in items]


def layers_of(spec: str, num_layers: int) -> tuple[int, ...]:
    """A layer option (parse_layer_spec) resolved for a model of `num_layers`: distinct indices,
    the first (the headline) first. ValueError when an index does not exist."""
    items = [middle_layer(num_layers) if item == "middle" else item for item in parse_layer_spec(spec)]
    return tuple(dict.fromkeys(resolve_layers(tuple(items), num_layers)))


# ---------------------------------------------------------------- the evaluator


def headline(per_layer: dict, layers: tuple, metric: str, averaged: list[str]) -> tuple[dict, dict]:
    """(per_language, summary): the first layer's metrics, with `<metric>_layer<k>` of every layer
    when there are several, and their means over languages."""
    per_language = {lang: dict(metrics) for lang, metrics in per_layer[layers[0]].items()}
    if len(layers) > 1:
        for layer in layers:
            for lang, metrics in per_layer[layer].items():
                per_language[lang][f"{metric}_layer{layer}"] = metrics[metric]
        averaged = averaged + [f"{metric}_layer{layer}" for layer in layers]
    summary = {key: float(np.mean([m[key] for m in per_language.values()])) for key in averaged}
    return per_language, summary


class Retrieval(Evaluator):
    """Tatoeba-style retrieval accuracy or BUCC-style mining F1 of pooled sentence vectors."""
    kind = "retrieval"

    def __init__(self, name, options):
        super().__init__(name, options)
        self._sets: list[ParallelSet] | None = None   # read by check()

    @classmethod
    def defaults(cls) -> dict:
        return {
            "data": "",            # a Tatoeba directory, "a.de|b.en" file pairs, <src>-<tgt>.tsv files
            "mode": "retrieval",   # retrieval (accuracy@1) | mining (margin-based, F1)
            "languages": "",       # Tatoeba: "" = XTREME's present, or "deu,fra"; else one src-tgt per input
            "layer": "middle",     # "middle", an index ("7", "-1") or several ("0,2,4")
            "pooling": "mean",     # mean (XTREME) | first (<s>) | inner (mean between <s> and </s>)
            "max_pairs": 0,        # the first N pairs (mining: gold pairs) of each language; 0 = all
            "k": 4,                # mining: neighbourhood size of the margin
            "distractors": 200,    # mining: unpaired sentences per side and language
        }

    def check(self) -> None:
        self._check_options()
        try:
            self._sets = read_parallel_sets(self.options.data, self.options.languages)
        except ConfigError as error:
            raise ConfigError(f"{self.field('data')} / {self.field('languages')}: {error}") from None
        needed = 2 * self.options.distractors + 2
        small = [f"{s.language} ({len(s.source)} pairs, {s.files[0] if s.files else self.options.data})" for s in self._sets
                 if len(s.source) < needed]
        if self.options.mode == "mining" and small:
            most = (min(len(s.source) for s in self._sets) - 2) // 2
            raise DataError(f"{self.field('distractors')}={self.options.distractors} needs at least {needed} "
                            f"pairs per language (2 gold pairs and the distractors); too few in: "
                            f"{', '.join(small)}; these languages allow at most {max(most, 0)} distractors")

    def _check_options(self) -> None:
        options = self.options
        for option, allowed in (("mode", MODES), ("pooling", POOLINGS)):
            if options[option] not in allowed:
                raise ConfigError(f"{self.field(option)}: {options[option]!r}; use one of "
                                  + ", ".join(allowed))
        try:
            parse_layer_spec(options.layer)
        except ValueError as error:
            raise ConfigError(f"{self.field('layer')}: {error}") from None
        for option, least in (("max_pairs", 0), ("k", 1), ("distractors", 0)):
            if options[option] < least:
                raise ConfigError(f"{self.field(option)}: {options[option]}; must be at least {least}")
        if options.mode == "mining" and options.max_pairs == 1:
            raise ConfigError(f"{self.field('max_pairs')}: mining needs at least 2 gold pairs (one per half)")
        if not options.data:
            raise ConfigError(f"{self.field('data')} is not set: give a Tatoeba directory, "
                              "'a.de|b.en' file pairs or <src>-<tgt>.tsv files")

    def _layers(self, num_layers: int) -> tuple[int, ...]:
        try:
            return layers_of(self.options.layer, num_layers)
        except ValueError as error:
            raise ConfigError(f"{self.field('layer')}: {error}") from None

    def evaluate(self, context: EvalContext) -> Result:
        if self._sets is None:
            self.check()
        layers = self._layers(context.subject.model_config.num_layers)
        if self.options.mode == "mining":
            per_layer, sizes = self._mine(context, layers)
            per_language, summary = headline(per_layer, layers, "f1", ["precision", "recall", "f1"])
        else:
            per_layer, sizes = self._retrieve(context, layers)
            per_language, summary = headline(per_layer, layers, "acc", [*DIRECTIONS, "acc"])
        for lang, metrics in per_language.items():
            context.log(f"{self.name}: {lang} " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        details = {"mode": self.options.mode, "layers": list(layers), "pooling": self.options.pooling,
                   "sizes": sizes, "per_layer": {str(layer): per_layer[layer] for layer in layers}}
        if self.options.mode == "mining":
            details["k"] = self.options.k
        chance = {} if self.options.mode == "mining" else {   # the gold among n candidates by luck
            lang: {metric: 1.0 / sizes[lang]["pairs"] for metric in values} for lang, values in per_language.items()}
        return Result(per_language=per_language, summary=summary, details=details, chance=chance,
                      data_files=[f for s in self._sets for f in s.files],
                      artifacts=self._plot_layers(context, per_layer))

    def languages_used(self) -> list[str]:
        return list(dict.fromkeys(code for s in self._sets for code in (s.source_language, s.target_language)))

    def _encode(self, context: EvalContext, text_lists: list[list[str]], layers) -> list[np.ndarray]:
        """Vectors [layers, n, hidden] of each list, from one encode call over the distinct texts: the
        lists alternate source and target sides of the sets, in order, each side in its language."""
        per_set = len(text_lists) // len(self._sets)
        languages = [(s.source_language, s.target_language)[k % 2] for s in self._sets for k in range(per_set)]
        distinct = list(dict.fromkeys((text, language) for texts, language in zip(text_lists, languages)
                                      for text in texts))
        context.log(f"{self.name}: encoding {len(distinct)} sentences of {len(self._sets)} language pair(s), "
                    f"layer(s) {', '.join(map(str, layers))}")
        vectors = context.encode([text for text, _ in distinct], layers=layers, pooling=self.options.pooling,
                                 language=[language for _, language in distinct])
        row = {key: i for i, key in enumerate(distinct)}
        return [vectors[:, [row[text, language] for text in texts]] for texts, language in zip(text_lists, languages)]

    def _retrieve(self, context, layers):
        limit = self.options.max_pairs or None
        sides = [side for s in self._sets for side in (s.source[:limit], s.target[:limit])]
        vectors = self._encode(context, sides, layers)
        per_layer = {layer: {} for layer in layers}
        for i, parallel in enumerate(self._sets):
            for j, layer in enumerate(layers):
                metrics = retrieval_accuracy(vectors[2 * i][j], vectors[2 * i + 1][j])
                metrics["acc"] = float(np.mean([metrics[d] for d in DIRECTIONS]))
                per_layer[layer][parallel.language] = metrics
        return per_layer, {s.language: {"pairs": len(s.source[:limit])} for s in self._sets}

    def _mine(self, context, layers):
        distractors, halves, sizes = self.options.distractors, [], {}
        for parallel in self._sets:
            gold = len(parallel.source) - 2 * distractors
            gold = min(gold, self.options.max_pairs or gold)
            halves.append(mining_halves(parallel.source, parallel.target, gold, distractors))
            sizes[parallel.language] = {"gold_pairs": gold, "distractors_per_side": distractors}
        sides = [side for pair in halves for half in pair for side in half[:2]]
        vectors = self._encode(context, sides, layers)
        per_layer = {layer: {} for layer in layers}
        for i, parallel in enumerate(self._sets):
            (_, _, dev_gold), (_, _, test_gold) = halves[i]
            dev_x, dev_y, test_x, test_y = vectors[4 * i:4 * i + 4]
            for j, layer in enumerate(layers):
                per_layer[layer][parallel.language] = mining_metrics(
                    (dev_x[j], dev_y[j], dev_gold), (test_x[j], test_y[j], test_gold), self.options.k)
        return per_layer, sizes

    def _plot_layers(self, context, per_layer) -> list[str]:
        """The main metric by layer: the mean over languages, and each language when there are few."""
        if context.artifacts_dir is None or len(per_layer) < 2:
            return []
        metric = "f1" if self.options.mode == "mining" else "acc"
        layers = sorted(per_layer)
        languages = list(per_layer[layers[0]])
        curve = {lang: [per_layer[layer][lang][metric] for layer in layers] for lang in languages}
        series = {"mean": (layers, list(np.mean(list(curve.values()), axis=0)))}
        if len(languages) <= 8:
            series.update({lang: (layers, values) for lang, values in curve.items()})
        name = f"{self.name}_{metric}_by_layer.png"
        levels = {} if self.options.mode == "mining" else {   # retrieval's chance: 1 / pairs, averaged
            "chance": float(np.mean([1 / len(s.source[:self.options.max_pairs or None]) for s in self._sets]))}
        plots.line_chart(os.path.join(context.artifacts_dir, name), f"{self.name}: {metric} by layer", series,
                         xlabel="layer (0 = embeddings)", ylabel=metric, levels=levels)
        return [name]
