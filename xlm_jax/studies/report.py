"""A study's report: report.md (arms, the paper's claims against what was measured, a table per
headline metric with each arm's random-init baseline beside it), results.json and PNG plots
(bars per language comparing arms, training-loss curves, and the study's own figures)."""
import json
import math
import os

import numpy as np

from xlm_jax.evaluation import plots

LOSS_PLOT = "training_loss.png"


def per_language(record: dict, metric: str, random_init: bool = False, targets_only: bool = False) -> dict[str, float]:
    """language -> value of `metric` in an evaluator's record (or in its random-init baseline);
    `targets_only` leaves out a fine-tuning task's source language (what transfer is measured on)."""
    source = record.get("source_language", "") if targets_only else ""
    if random_init:
        record = record.get("random_init") or {}
    return {language: float(values[metric]) for language, values in record.get("per_language", {}).items()
            if metric in values and language != source}


def mean_of(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


def headline_values(record: dict, headline: list, random_init: bool = False) -> dict[str, float]:
    """The languages a headline column averages: fine-tuning tasks' targets, or the one it names."""
    values = per_language(record, headline[1], random_init, targets_only=True)
    if len(headline) <= 3:
        return values
    language = headline[3]
    return {language: values[language]} if language in values else {}


def chance_values(results: dict, headline: list) -> dict[str, float]:
    """What a random guess scores on a headline column's languages (retrieval: 1 / pairs), from the
    first arm that recorded it."""
    for entry in results["arms"].values():
        record = entry["evals"].get(headline[0], {})
        values = headline_values({**record, "per_language": record.get("chance", {})}, headline)
        if values:
            return values
    return {}


def _label(headline: list) -> str:
    evaluator, metric, direction = headline[:3]
    return f"{evaluator} {metric}{f' [{headline[3]}]' if len(headline) > 3 else ''} ({direction})"


def _metric_tables(headline: list) -> list[tuple[str, str, str]]:
    """(evaluator, metric, direction) once each, for the per-language tables and bar charts."""
    return list(dict.fromkeys(tuple(h[:3]) for h in headline))


def _cell(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


def final_loss(curve: list) -> float:
    """Mean training loss over the last tenth of the curve's points."""
    if not curve:
        return math.nan
    tail = curve[-max(1, len(curve) // 10):]
    return float(np.mean([loss for _, loss in tail]))


def markdown(results: dict, figures: list[str]) -> str:
    lines = [f"# {results['title']} (`{results['preset']}` preset)", ""]
    if results["paper"]:
        lines += [f"Seed paper: {results['paper']}.", ""]
    if results["notes"]:
        lines += [results["notes"], ""]
    headline = results["headline"]
    lines += ["## Arms", "", "Each cell: the arm's mean over languages (for fine-tuning tasks, over the target "
              "languages), its random-init baseline (same architecture and tokenizer, untrained) in parentheses.", "",
              "| arm | what it is | starts from | steps | final train loss | "
              + " | ".join(_label(h) for h in headline) + " |",
              "|---|---|---|---:|---:|" + "---:|" * len(headline)]
    for arm, entry in results["arms"].items():
        cells = []
        for column in headline:
            record = entry["evals"].get(column[0], {})
            model, baseline = mean_of(headline_values(record, column)), mean_of(headline_values(record, column, True))
            cells.append(_cell(model) + ("" if math.isnan(baseline) else f" ({_cell(baseline)})"))
        lines.append(f"| {arm} | {entry['description']} | {entry['start_from'] or 'scratch'} | {entry['steps']} | "
                     f"{_cell(final_loss(entry['train_loss']))} | " + " | ".join(cells) + " |")
    chance = [mean_of(chance_values(results, column)) for column in headline]
    if not all(math.isnan(value) for value in chance):
        lines.append("| chance | a random guess | | | | " + " | ".join(_cell(value) for value in chance) + " |")
    if results["findings"]:
        lines += ["", "## The paper's findings against this study", "", "| the paper | measured here | verdict |",
                  "|---|---|---|"]
        lines += [f"| {claim} | {measured} | **{verdict}** |" for claim, measured, verdict in results["findings"]]
    for evaluator, metric, direction in _metric_tables(headline):
        languages = sorted({lang for entry in results["arms"].values()
                            for lang in per_language(entry["evals"].get(evaluator, {}), metric)})
        if not languages:
            continue
        lines += ["", f"## {evaluator}: {metric} per language ({direction} is better)", "",
                  "| arm | " + " | ".join(languages) + " |", "|---|" + "---:|" * len(languages)]
        for arm, entry in results["arms"].items():
            record = entry["evals"].get(evaluator, {})
            model, baseline = per_language(record, metric), per_language(record, metric, True)
            lines.append(f"| {arm} | " + " | ".join(
                _cell(model.get(lang, math.nan)) + (f" ({_cell(baseline[lang])})" if lang in baseline else "")
                for lang in languages) + " |")
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += ["", "## Each arm as its own command", "",
              "Every arm is an ordinary `--mode=train` run (run them on several hosts, then `--mode=study` "
              "on the same directory evaluates and reports):", "", "```"]
    lines += [entry["command"] for entry in results["arms"].values()] + ["```", ""]
    return "\n".join(lines)


def charts(results: dict, directory: str) -> list[str]:
    """Bars per language (one bar per arm) for each headline metric, and the training-loss curves."""
    files = []
    for evaluator, metric, direction in _metric_tables(results["headline"]):
        records = {arm: entry["evals"].get(evaluator, {}) for arm, entry in results["arms"].items()}
        series = {arm: per_language(record, metric) for arm, record in records.items()}
        if any(series.values()):
            name = f"{evaluator}_{metric}.png"
            baselines = {arm: per_language(record, metric, random_init=True) for arm, record in records.items()}
            chance = {lang: value for record in records.values()
                      for lang, value in per_language({"per_language": record.get("chance", {})}, metric).items()}
            plots.bar_chart(os.path.join(directory, name), f"{evaluator}: {metric} ({direction} is better)",
                            {arm: values for arm, values in series.items() if values}, metric,
                            baselines=baselines, chance=chance)
            files.append(name)
    curves = {arm: ([s for s, _ in entry["train_loss"]], [loss for _, loss in entry["train_loss"]])
              for arm, entry in results["arms"].items() if entry["train_loss"]}
    if curves:
        plots.line_chart(os.path.join(directory, LOSS_PLOT), "training loss (all objectives, summed)", curves,
                         xlabel="update", ylabel="loss")
        files.append(LOSS_PLOT)
    return files


def write(study, results: dict, directory: str) -> None:
    figures = charts(results, directory) + (study.plots(results, directory) if study.plots else [])
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    with open(os.path.join(directory, "report.md"), "w") as f:
        f.write(markdown(results, figures))
