"""PNG plots for the evaluation reports (matplotlib, no display needed).

Every function writes one PNG and returns its path; they take plain dicts and lists,
so an evaluator or the report can call them without knowing matplotlib.
"""
import os

import matplotlib

matplotlib.use("Agg")   # files only: no display on a training host
import matplotlib.pyplot as plt
import numpy as np


def _save(figure, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def bar_chart(path: str, title: str, series: dict[str, dict[str, float]], ylabel: str = "",
              baselines: dict[str, dict[str, float]] | None = None, chance: dict[str, float] | None = None) -> str:
    """Grouped bars: one group per category (e.g. language), one bar per series (e.g. model,
    random-init, majority). `baselines` (series -> category -> value) marks each bar's own
    reference, e.g. that arm's random-init score, as a black tick across it; `chance`
    (category -> value) a dashed red line across the whole group."""
    categories = sorted({c for values in series.values() for c in values})
    figure, axes = plt.subplots(figsize=(max(6.0, 0.45 * len(categories) * max(len(series), 1)), 4))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(categories))
    labelled = set()

    def once(label):   # each reference kind in the legend once
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, (name, values) in enumerate(series.items()):
        centres = x + (i - (len(series) - 1) / 2) * width
        axes.bar(centres, [values.get(c, np.nan) for c in categories], width, label=name)
        own = (baselines or {}).get(name, {})
        for centre, category in zip(centres, categories):
            if category in own:
                axes.hlines(own[category], centre - width / 2, centre + width / 2, colors="black", linewidth=2,
                            label=once("random init"))
    for position, category in zip(x, categories):
        if chance and category in chance:
            axes.hlines(chance[category], position - 0.45, position + 0.45, colors="red", linestyles="dashed",
                        label=once("chance"))
    axes.set_xticks(x, categories, rotation=60 if len(categories) > 12 else 0)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    if len(series) > 1 or labelled:
        axes.legend(fontsize="small")
    return _save(figure, path)


def line_chart(path: str, title: str, series: dict[str, tuple[list, list]], xlabel: str = "",
               ylabel: str = "", log_x: bool = False, levels: dict[str, float] | None = None) -> str:
    """One line per series: name -> (xs, ys); `levels` (label -> value) are dashed horizontal
    references across the plot, e.g. chance."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for name, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", label=name)
    for label, value in (levels or {}).items():
        axes.axhline(value, color="red", linestyle="dashed", label=label)
    if log_x:
        axes.set_xscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if len(series) > 1 or levels:
        axes.legend()
    axes.grid(alpha=0.3)
    return _save(figure, path)


def heatmap(path: str, title: str, matrix, row_labels: list, column_labels: list,
            vmin: float | None = 0.0, vmax: float | None = 1.0) -> str:
    """A matrix with its values written in the cells (e.g. CKA per language and layer)."""
    matrix = np.asarray(matrix, np.float64)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.7 * len(column_labels) + 2), max(3.0, 0.4 * len(row_labels) + 1.5)))
    image = axes.imshow(matrix, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(column_labels)), column_labels)
    axes.set_yticks(range(len(row_labels)), row_labels)
    if matrix.size <= 400:
        for (i, j), value in np.ndenumerate(matrix):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    return _save(figure, path)
