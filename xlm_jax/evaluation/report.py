"""What an evaluation leaves for people: results.json, report.md and PNG plots.

`outcomes` maps an evaluator's name to its record: kind, options, the model's Result
fields, the random-init baseline's (`random_init`) and the seconds each took. The
Markdown puts every number beside its baselines (random init, majority class) and
marks the source language of fine-tuning tasks.
"""
import json
import math
import os

from xlm_jax.evaluation import plots

MAX_CHARTED_METRICS = 3   # per evaluator: the first metrics get a per-language bar chart


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _metrics(per_language: dict) -> list[str]:
    seen = []
    for values in per_language.values():
        seen.extend(k for k in values if k not in seen)
    return seen


def _language_table(record: dict) -> list[str]:
    per_language = record["per_language"]
    baseline = (record.get("random_init") or {}).get("per_language", {})
    references = [(label, record.get(key) or {}) for key, label in (("majority", "majority"), ("chance", "chance"))]
    metrics = _metrics(per_language)
    header = ["language"]
    for metric in metrics:
        header.append(metric)
        if baseline:
            header.append(f"{metric} (random init)")
        header += [f"{metric} ({label})" for label, values in references if any(metric in m for m in values.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for language, values in per_language.items():
        name = f"{language} (source)" if language == record.get("source_language") else language
        row = [name]
        for metric in metrics:
            row.append(_format(values.get(metric)))
            if baseline:
                row.append(_format(baseline.get(language, {}).get(metric)))
            row += [_format(reference.get(language, {}).get(metric)) for _, reference in references
                    if any(metric in m for m in reference.values())]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(title: str, outcomes: dict) -> str:
    lines = [f"# {title}", ""]
    for name, record in outcomes.items():
        options = {k: v for k, v in record["options"].items() if k not in ("kind",)}
        lines += [f"## {name} ({record['kind']})", "",
                  "Options: " + ", ".join(f"`{k}={v}`" for k, v in options.items()) + "  ",
                  f"Took {record['seconds']:.1f} s"
                  + (f" (random-init baseline: {record['random_init']['seconds']:.1f} s)"
                     if record.get("random_init") else "") + ".", ""]
        if record["summary"]:
            baseline = (record.get("random_init") or {}).get("summary", {})
            lines += ["| summary | model | random init |", "|---|---|---|"]
            lines += [f"| {k} | {_format(v)} | {_format(baseline.get(k))} |" for k, v in record["summary"].items()]
            lines.append("")
        if record["per_language"]:
            lines += _language_table(record) + [""]
        for artifact in record.get("artifacts", []):
            if artifact.endswith(".png"):
                lines += [f"![{artifact}]({artifact})", ""]
    return "\n".join(lines)


def language_charts(directory: str, name: str, record: dict) -> list[str]:
    """Per-language bars for the first metrics, the model beside its baselines."""
    written = []
    baseline = (record.get("random_init") or {}).get("per_language", {})
    for metric in _metrics(record["per_language"])[:MAX_CHARTED_METRICS]:
        series = {"model": {lang: v[metric] for lang, v in record["per_language"].items() if metric in v}}
        if baseline:
            series["random init"] = {lang: v[metric] for lang, v in baseline.items() if metric in v}
        majority = {lang: v[metric] for lang, v in (record.get("majority") or {}).items() if metric in v}
        if majority:
            series["majority class"] = majority
        chance = {lang: v[metric] for lang, v in (record.get("chance") or {}).items() if metric in v}
        filename = f"{name}_{metric}.png".replace("/", "_")
        plots.bar_chart(os.path.join(directory, filename), f"{name}: {metric}", series, ylabel=metric,
                        chance=chance)
        written.append(filename)
    return written


def over_steps_chart(directory: str, name: str, history: dict[int, dict]) -> str | None:
    """Summary metrics of evaluator `name` over the training steps that evaluated it."""
    steps = sorted(history)
    if len(steps) < 2:
        return None
    metrics = [k for k in history[steps[-1]] if all(k in history[s] for s in steps)]
    if not metrics:
        return None
    filename = f"{name}_over_steps.png"
    plots.line_chart(os.path.join(directory, filename), f"{name} over training steps",
                     {m: (steps, [history[s][m] for s in steps]) for m in metrics}, xlabel="step")
    return filename


def write_json(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=float)
        f.write("\n")
