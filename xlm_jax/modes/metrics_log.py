"""The run's metric writer: per-step metrics, throughput, MFU and sampled languages.

Per-step metrics stay on device until a log point; only process 0 prints and writes
TensorBoard summaries and metrics.jsonl. Fetching them is also where a non-finite
step stops the run (see MetricsLog.flush).
"""
import contextlib
import json
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from xlm_jax.errors import TrainingError
from xlm_jax.evaluation.runner import scalar_tags
from xlm_jax.parallel.multihost import log
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.workdir import write_atomically


def _updates(last_step: int, num_steps: int, metrics: dict):
    """(step, its metrics) of each update of a call ending at last_step (metrics stacked if num_steps > 1)."""
    if num_steps == 1:
        yield last_step, metrics
        return
    for i in range(num_steps):
        yield last_step - num_steps + 1 + i, {key: values[i] for key, values in metrics.items()}


class MetricsLog:
    """Per-step metrics stay on device until a log point, so steps are not serialized."""

    def __init__(self, workdir: str, config, total_steps: int, objectives=(), languages=(), probs=(),
                 resume_step: int | None = None):
        """`resume_step`: training starts (again) after this step; the rows metrics.jsonl holds of
        later steps, logged by a run that was killed before its next checkpoint and redone now, are
        dropped, and the sampling tally carries on from the last row kept."""
        self.pending = []
        self.objectives = list(objectives)
        self._costs = {}   # sorted batch names -> cost()
        self.languages, self.probs = list(languages), np.asarray(probs, np.float64)
        self.sampled = np.zeros(len(self.languages), np.int64)   # this process' rows per language since step 0
        self.history = []
        self.total_steps = total_steps
        self.peak_flops, self.peak_source = metrics_lib.peak_flops()
        self.skip_nonfinite = config.train.skip_nonfinite
        self.max_skips = config.train.max_consecutive_skips
        self.skip_streak = 0   # updates skipped in a row, up to the last fetched step
        is_main = jax.process_index() == 0
        path = os.path.join(workdir, "metrics.jsonl")
        if is_main and resume_step is not None:
            self._resume(path, resume_step)
        self.writer = metrics_lib.SummaryWriter(os.path.join(workdir, "tensorboard"), is_main)
        self.jsonl = open(path, "a") if is_main else None
        self._new_window()

    def _resume(self, path: str, step: int) -> None:
        if not os.path.exists(path):
            return
        with open(path) as f:
            lines = f.readlines()
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:   # a line cut short by the kill: it belonged to no finished step
                rows.append({"step": step + 1})
        kept = [line for line, row in zip(lines, rows) if row.get("step", 0) <= step]
        if len(kept) < len(lines):
            write_atomically(path, "".join(kept).encode("utf-8"))
            log(f"metrics.jsonl: dropped {len(lines) - len(kept)} row(s) of the steps after {step}, which this "
                "run redoes")
        tallies = [row for row in rows if "sampled" in row and row["step"] <= step]
        if tallies and list(tallies[-1]["sampled"]) == self.languages:
            fractions = np.array([tallies[-1]["sampled"][lang] for lang in self.languages])
            self.sampled = np.rint(fractions * tallies[-1]["sampled_examples"]).astype(np.int64)

    def _new_window(self) -> None:
        self.window_start = time.perf_counter()
        self.window_steps, self.window_tokens, self.window_flops = 0, 0, 0.0
        self.excluded_seconds = 0.0

    def cost(self, batch_names) -> tuple[int, float]:
        """(input tokens, model FLOPs) of a step that trains on `batch_names`; counted once per set."""
        key = tuple(sorted(batch_names))
        if key not in self._costs:
            trained = [o for o in self.objectives if o.batch_name in key]
            self._costs[key] = (sum(o.tokens_per_step() for o in trained),
                                sum(sum(o.flops().values()) for o in trained))
        return self._costs[key]

    def add(self, step: int, metrics, batch_names, timed: bool = True, num_steps: int = 1) -> None:
        """The metrics of one call of the train step, which ends at `step`: one update's scalars, or
        with num_steps > 1 those of updates step - num_steps + 1 ... step, stacked in that order."""
        self.pending.append((step, num_steps, metrics))
        if timed:
            tokens, flops = self.cost(batch_names)
            self.window_steps += num_steps
            self.window_tokens += num_steps * tokens
            self.window_flops += num_steps * flops

    def count_languages(self, batches) -> None:
        """Host-side tally of the language of each monolingual row this process feeds the step
        (the rows whose language data.alpha samples: MLM's blocks)."""
        for o in self.objectives:
            if o.stream_kind == "blocks" and o.batch_name == o.name and o.name in batches:
                language = batches[o.name]["language"]
                self.sampled += np.bincount(np.asarray(language).ravel(), minlength=len(self.languages))

    def sampled_fractions(self) -> tuple[np.ndarray, int]:
        """Realized language fractions of all processes' rows since step 0, and their count."""
        counts = self.sampled
        if jax.process_count() > 1:  # every process logs the same windows, so they all get here
            counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, len(counts)).sum(0)
        total = int(counts.sum())
        return counts / max(total, 1), total

    def log_sampled(self, step: int) -> None:
        """Realized vs target q_i: all languages to metrics.jsonl and TensorBoard, the largest and
        the furthest off (in binomial standard errors) to stdout."""
        if not self.languages:
            return
        fractions, total = self.sampled_fractions()
        if not total:
            return
        z = (fractions - self.probs) / np.sqrt(np.maximum(self.probs * (1 - self.probs), 1e-12) / total)
        top = list(np.argsort(-self.probs, kind="stable")[:5])
        worst = int(np.argmax(np.abs(z)))
        shown = top + ([worst] if worst not in top else [])
        parts = [f"{self.languages[i]} {fractions[i]:.3f}/{self.probs[i]:.3f}" for i in shown]
        log(f"sampled/q over {total:,} examples: {', '.join(parts)}"
            + (f" (of {len(self.languages)})" if len(self.languages) > len(shown) else "")
            + f"; furthest {self.languages[worst]} {z[worst]:+.1f} s.e.")
        sampled = {lang: float(f) for lang, f in zip(self.languages, fractions)}
        self.writer.scalars(step, {f"sampled/{lang}": f for lang, f in sampled.items()})
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, "sampled": sampled, "sampled_examples": total}) + "\n")
            self.jsonl.flush()

    @contextlib.contextmanager
    def untimed(self):
        """Time spent in here (compilation, evals, checkpoint saves) is not training throughput."""
        start = time.perf_counter()
        yield
        self.excluded_seconds += time.perf_counter() - start

    def flush(self) -> list[dict]:
        """Fetches pending metrics; raises TrainingError at the first non-finite step, or with
        train.skip_nonfinite once train.max_consecutive_skips updates in a row were skipped."""
        fetched = jax.device_get(self.pending)
        self.pending = []
        rows = []
        for step, values in (update for call in fetched for update in _updates(*call)):
            row = {"step": step, **{k: float(v) for k, v in values.items()}}
            if row["nonfinite"] and not self.skip_nonfinite:
                raise TrainingError(
                    f"non-finite loss or gradients at step {step} (loss={row['loss']}, "
                    f"grad_norm={row['grad_norm']}); the update was not applied and no checkpoint "
                    f"was written after it. Lower train.learning_rate, check the data, or set "
                    f"--config.train.skip_nonfinite=True to skip such updates")
            self.skip_streak = self.skip_streak + 1 if row["nonfinite"] else 0
            if self.skip_streak >= self.max_skips:
                raise TrainingError(
                    f"{self.skip_streak} updates in a row were non-finite and skipped (steps "
                    f"{step - self.skip_streak + 1}-{step}; train.max_consecutive_skips={self.max_skips}): "
                    "the parameters are likely ruined, so no checkpoint was written since the last "
                    "good update. Resume from the last checkpoint with a lower train.learning_rate "
                    "or check the data")
            rows.append(row)
        return rows

    def log_window(self, step: int) -> None:
        rows = self.flush()
        if not rows:
            return
        elapsed = max(time.perf_counter() - self.window_start - self.excluded_seconds, 1e-9)
        tokens_per_s = self.window_tokens / elapsed
        mfu = self.window_flops / elapsed / self.peak_flops
        last = rows[-1]
        # The mean of each objective's metrics over the steps that trained it ("alternate" skips some).
        keys = sorted({k for r in rows for k in r if "/" in k})
        per_objective = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
        summary = {"loss": float(np.mean([r["loss"] for r in rows])), **per_objective,
                   "learning_rate": last["learning_rate"], "grad_norm": float(np.mean([r["grad_norm"] for r in rows])),
                   "tokens_per_s": tokens_per_s, "mfu": mfu,
                   "skipped_nonfinite": sum(r["nonfinite"] for r in rows)}
        eta = (self.total_steps - step) * elapsed / max(self.window_steps, 1)
        shown = "  ".join(f"{o.name} " + "/".join(f"{per_objective[f'{o.name}/{k}']:.3f}" for k in ("loss", "accuracy")
                                                   if f"{o.name}/{k}" in per_objective)
                          for o in self.objectives if f"{o.name}/loss" in per_objective)
        log(f"step {step}/{self.total_steps}  loss {summary['loss']:.4f}  {shown} (loss/acc)  "
            f"lr {summary['learning_rate']:.2e}  grad_norm {summary['grad_norm']:.3f}  {tokens_per_s:,.0f} tok/s  "
            f"MFU {100 * mfu:.1f}%  ETA {metrics_lib.format_duration(eta)}"
            + (f"  skipped {summary['skipped_nonfinite']:.0f} non-finite" if summary["skipped_nonfinite"] else ""))
        for o in self.objectives:
            own = {k.split("/", 1)[1]: v for k, v in per_objective.items() if k.startswith(f"{o.name}/")}
            for warning in o.warnings(own) if own else ():
                log(f"warning at step {step}: {warning}")
        self.writer.scalars(step, {f"train/{k}": v for k, v in summary.items()})
        if self.jsonl:
            for row in rows:
                self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
        self.history.extend(rows)
        self.log_sampled(step)
        self._new_window()

    def log_evals(self, step: int, records: dict) -> None:
        """Evaluation records (evaluation/runner.py): per-language numbers to stdout, TensorBoard
        (eval/<name>/<language>/<metric>, eval/<name>/<summary metric>) and metrics.jsonl."""
        for name, record in records.items():
            parts = [f"{lang} " + "/".join(f"{v:.3f}" for v in values.values())
                     for lang, values in record["per_language"].items()]
            if parts:
                metrics = "/".join(next(iter(record["per_language"].values())))
                log(f"eval {name} step {step}  {metrics} per language: {', '.join(parts)}")
        self.writer.scalars(step, scalar_tags(records))
        if self.jsonl:
            rows = {name: {k: record[k] for k in ("summary", "per_language")} for name, record in records.items()}
            self.jsonl.write(json.dumps({"step": step, "evals": rows}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        self.writer.close()
        if self.jsonl:
            self.jsonl.close()
