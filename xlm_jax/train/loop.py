"""The training loop, top to bottom: data, state, steps, logs, evals, checkpoints.

Side effects live here (and in main.py) only. Every process runs this same loop;
only process 0 prints and writes summaries. A run is exactly resumable: the state,
the data iterator position and all randomness derive from the checkpoint and the
config seed, so a killed and resumed run reproduces an uninterrupted one.
"""
import contextlib
import json
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from xlm_jax import config as config_lib
from xlm_jax.data.pipeline import eval_batches, prepare_data, train_batches
from xlm_jax.data.shards import num_shards
from xlm_jax.data.text import Processes, read_text
from xlm_jax.data.tokenizers import TOKENIZER_FILES, tokenizer_exists
from xlm_jax.errors import CheckpointError, ConfigError, TrainingError
from xlm_jax.interop.hf import adopt_hf_model, import_hf
from xlm_jax.interop.vocab import adopt_vocab_extension, extend_params
from xlm_jax.models.heads import MaskedLM
from xlm_jax.models.vocab_padding import padded_vocab_size, resize_vocab_rows, vocab_padding_params
from xlm_jax.parallel.mesh import batch_sharding, batch_shards, make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train.checkpoints import Checkpoints, abstract_with_shardings, save_config
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import (count_params, create_train_state, state_shardings,
                                 train_state_from_params)
from xlm_jax.train.step import make_eval_step, make_train_step
from xlm_jax.workdir import make_workdir


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


class PreemptionFlag:
    """SIGTERM sets a flag; the loop finishes the step, saves and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def agreed(self) -> bool:
        """True on every process as soon as any process was asked to stop."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
        return bool(np.asarray(flags).any())

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def check_batch_layout(config, mesh, rules) -> None:
    t = config.train
    per_micro = t.batch_size // t.grad_accum_steps
    shards = batch_shards(mesh, rules)
    if per_micro % shards:
        raise ConfigError(
            f"config field `train.batch_size`: {t.batch_size} / grad_accum_steps "
            f"{t.grad_accum_steps} = {per_micro} examples per microbatch, not divisible by the "
            f"{shards} batch shards of mesh {dict(mesh.shape)} (rules {config.mesh.rules!r})")
    if t.batch_size % jax.process_count():
        raise ConfigError(f"config field `train.batch_size`: {t.batch_size} is not divisible by "
                          f"the {jax.process_count()} processes")


def to_global(local_batch: dict, sharding) -> dict:
    """This process' rows -> one global jax.Array per key, sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def process_zero_first(done: str, task):
    """task(log) on process 0, then, once it is `done` (it may write workdir files the others
    read, such as the tokenizer), task(silent log) on the other processes."""
    if jax.process_index() == 0:
        result = task(log)
    multihost_utils.sync_global_devices(done)
    if jax.process_index() != 0:
        result = task(lambda _: None)
    return result


def allgather_int64(x) -> np.ndarray:
    """process_allgather of an int64 array, bit-exact: [processes, *x.shape] (jax without x64
    would narrow int64 to int32, and corpus counts can pass 2**31)."""
    x = np.ascontiguousarray(x, np.int64)
    return np.ascontiguousarray(multihost_utils.process_allgather(x.view(np.int32))).view(np.int64)


def this_process() -> Processes:
    return Processes(jax.process_index(), jax.process_count(), allgather_int64, process_zero_first)


class MetricsLog:
    """Per-step metrics stay on device until a log point, so steps are not serialized."""

    def __init__(self, workdir: str, config, total_steps: int, languages=(), probs=()):
        self.pending = []
        self.languages, self.probs = list(languages), np.asarray(probs, np.float64)
        self.sampled = np.zeros(len(self.languages), np.int64)   # this process' rows per language since start
        self.history = []
        self.total_steps = total_steps
        self.tokens_per_step = config.train.batch_size * config.data.seq_len
        self.flops_per_token = metrics_lib.flops_per_token(config.model, config.data.seq_len,
                                                          config.data.mask_prob)
        self.peak_flops, self.peak_source = metrics_lib.peak_flops()
        self.skip_nonfinite = config.train.skip_nonfinite
        self.max_skips = config.train.max_consecutive_skips
        self.skip_streak = 0   # updates skipped in a row, up to the last fetched step
        is_main = jax.process_index() == 0
        self.writer = metrics_lib.SummaryWriter(os.path.join(workdir, "tensorboard"), is_main)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
        self.window_start = time.perf_counter()
        self.window_steps = 0
        self.excluded_seconds = 0.0

    def add(self, step: int, metrics, timed: bool = True) -> None:
        self.pending.append((step, metrics))
        self.window_steps += int(timed)

    def count_languages(self, language) -> None:
        """Host-side tally of the language of each row this process feeds the step."""
        self.sampled += np.bincount(np.asarray(language).ravel(), minlength=len(self.languages))

    def sampled_fractions(self) -> tuple[np.ndarray, int]:
        """Realized language fractions of all processes' rows since this run (re)started, and their count."""
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
        for step, values in fetched:
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
        tokens_per_s = self.window_steps * self.tokens_per_step / elapsed
        mfu = tokens_per_s * self.flops_per_token / self.peak_flops
        mean = lambda k: float(np.mean([r[k] for r in rows]))
        last = rows[-1]
        summary = {"loss": mean("loss"), "accuracy": mean("accuracy"),
                   "learning_rate": last["learning_rate"], "grad_norm": mean("grad_norm"),
                   "tokens_per_s": tokens_per_s, "mfu": mfu,
                   "skipped_nonfinite": sum(r["nonfinite"] for r in rows)}
        eta = (self.total_steps - step) * elapsed / max(self.window_steps, 1)
        log(f"step {step}/{self.total_steps}  loss {summary['loss']:.4f}  "
            f"acc {summary['accuracy']:.3f}  lr {summary['learning_rate']:.2e}  "
            f"grad_norm {summary['grad_norm']:.3f}  {tokens_per_s:,.0f} tok/s  "
            f"MFU {100 * mfu:.1f}%  ETA {metrics_lib.format_duration(eta)}"
            + (f"  skipped {summary['skipped_nonfinite']:.0f} non-finite" if summary["skipped_nonfinite"] else ""))
        self.writer.scalars(step, {f"train/{k}": v for k, v in summary.items()})
        if self.jsonl:
            for row in rows:
                self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
        self.history.extend(rows)
        self.log_sampled(step)
        self.window_start, self.window_steps, self.excluded_seconds = time.perf_counter(), 0, 0.0

    def log_eval(self, step: int, per_language: dict) -> None:
        if not per_language:
            return
        parts = [f"{lang} {r['loss']:.3f}/{r['accuracy']:.2f}" for lang, r in per_language.items()]
        total = {k: float(np.mean([r[k] for r in per_language.values()])) for k in ("loss", "accuracy")}
        log(f"eval step {step}  mean loss {total['loss']:.4f}  acc {total['accuracy']:.3f}  "
            f"(loss/acc per language: {', '.join(parts)})")
        scalars = {f"eval/{lang}/{k}": v for lang, r in per_language.items() for k, v in r.items()}
        scalars.update({f"eval/mean_{k}": v for k, v in total.items()})
        self.writer.scalars(step, scalars)
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, "eval": per_language}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        self.writer.close()
        if self.jsonl:
            self.jsonl.close()


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


def resume_note(data_state: dict, config, process_count: int, directory: str) -> str | None:
    """What to log when a checkpoint's data iterator was written by another number of processes;
    a ConfigError when it was written with other data shards (which would change every batch)."""
    shards = data_state.get("shards", num_shards(config))
    if shards != num_shards(config):
        raise ConfigError(f"config field `data.shards`: the checkpoints in {directory} were written with "
                          f"{shards} shards and this config has {num_shards(config)}, which gives other "
                          f"batches; resume with --config.data.shards={shards}, or use a new workdir")
    if data_state["process_count"] == process_count:
        return None
    return (f"resuming on {process_count} process(es) instead of {data_state['process_count']}: every global "
            f"batch stays the same (each of the {shards} data shards is its own stream, a function of the seed "
            "and the shard's data only); each process now reads other shards, and losses match the "
            "uninterrupted run to float rounding rather than bit for bit")


class Run:
    """Everything a run needs before its first step: mesh, data, model, sharded state.

    `read_only` (evaluation) writes nothing to the workdir: it needs a checkpoint and the
    tokenizer that trained it, and moves no damaged checkpoint aside.
    """

    def __init__(self, config, workdir: str, read_only: bool = False):
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        if not read_only:
            make_workdir(workdir)
        self.checkpoints = Checkpoints(workdir, config.checkpoint.keep, config.checkpoint.async_save,
                                       read_only=read_only)
        if read_only and self.checkpoints.latest_step() is None:
            raise CheckpointError(f"no checkpoint in {self.checkpoints.directory}: train first")
        if read_only and not tokenizer_exists(workdir):
            raise CheckpointError(f"{workdir} has checkpoints but no tokenizer ({' / '.join(TOKENIZER_FILES)}): "
                                  "restore the one that trained them")
        self.mesh = make_mesh(config.mesh)
        self.rules = logical_axis_rules(config.mesh.rules)
        check_batch_layout(config, self.mesh, self.rules)
        log(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in "
            f"{jax.process_count()} process(es); mesh {dict(self.mesh.shape)}, "
            f"rules {config.mesh.rules!r}")
        self.vocab_extension = None  # (imported tokenizer, extended tokenizer) with data.extend_vocab_pieces
        source = config.init_from.removeprefix("hf:")
        if source:   # before the corpus is read: a bad directory fails at once
            adopt_hf_model(config, source, workdir)
        processes = this_process()
        text = read_text(config, processes, log)   # this process's shards; counts agreed by all
        if source:
            resuming = self.checkpoints.latest_step() is not None
            multihost_utils.sync_global_devices("imported tokenizer in place")
            self.vocab_extension = process_zero_first("vocabulary extended", lambda log: adopt_vocab_extension(
                config, source, workdir, resuming=resuming, log=log, text=text))
            config_lib.validate(config)
            log(f"model: {config.model.num_layers} layers, hidden {config.model.hidden_size}, vocab "
                f"{config.model.vocab_size} from {source}")
        self.data = prepare_data(config, workdir, log, processes=processes, text=text)
        self.model = MaskedLM(config.model)
        self.optimizer = make_optimizer(config.train)
        self.abstract_state, self.shardings = state_shardings(
            self.model, self.optimizer, config, self.mesh, self.rules)
        self.rows_sharding = batch_sharding(self.mesh, self.rules)
        self.eval_step = make_eval_step(self.model, self.mesh, self.rules, self.shardings.params,
                                        self.rows_sharding)
        self.eval_sets = eval_sets(self.data, config)

    def restore_or_init(self, step: int | None = None):
        """Checkpoint `step`, or the newest readable one (see Checkpoints.restore), or a new state."""
        if self.checkpoints.latest_step() is not None:
            state, data_state = self.checkpoints.restore(
                abstract_with_shardings(self.abstract_state, self.shardings), step, log=log)
            log(f"resumed from {self.checkpoints.directory}/{int(state.step)} (data iterator at "
                f"step {data_state['next_step']}, written by {data_state['process_count']} "
                f"process(es))")
            note = resume_note(data_state, self.config, jax.process_count(), self.checkpoints.directory)
            if note:
                log(note)
            return state
        if not self.config.init_from:
            state = create_train_state(self.model, self.optimizer, self.config, self.mesh,
                                       self.rules, self.shardings)
            padding = vocab_padding_params(self.config.model)
            log(f"initialized {count_params(state.params) - padding:,} parameters"
                + (f" (and {padding:,} of vocabulary padding, always zero)" if padding else ""))
            return state
        imported = import_hf(self.config.init_from.removeprefix("hf:"))
        params = imported.params
        if self.vocab_extension:  # new rows: means of their pieces' old-tokenization rows
            params = extend_params(params, *self.vocab_extension)
        if not imported.has_head:  # an encoder-only checkpoint: the MLM head starts from scratch
            fresh = create_train_state(self.model, self.optimizer, self.config, self.mesh,
                                       self.rules, self.shardings)
            params = {**params, "lm_head": jax.device_get(fresh.params["lm_head"])}
        log(f"initialized from {self.config.init_from}"
            + ("" if imported.has_head else " (no MLM head there: a new one is trained)")
            + (f"; left out {', '.join(imported.dropped)}" if imported.dropped else ""))
        params = resize_vocab_rows(params, padded_vocab_size(self.config.model))   # this run's layout
        return train_state_from_params(params, self.optimizer, self.shardings)

    def evaluate(self, params) -> dict:
        return evaluate_languages(self.eval_step, params, self.eval_sets, self.rows_sharding)


def train_and_evaluate(config, workdir: str) -> list[dict]:
    """Trains to `train.num_steps` (resuming from <workdir>), returns the logged per-step metrics."""
    run = Run(config, workdir)
    state = run.restore_or_init()
    if jax.process_index() == 0:  # only once the checkpoint is known to fit this config
        save_config(workdir, config)
    start_step = int(state.step)
    train_step = make_train_step(run.model, run.optimizer, config, run.mesh, run.rules,
                                 run.shardings, run.rows_sharding)
    batches = train_batches(run.data, config, start_step=start_step)
    metrics_log = MetricsLog(workdir, config, config.train.num_steps, run.data.languages, run.data.probs)
    log(f"MFU counts {metrics_log.flops_per_token / 1e6:.1f} MFLOP per token; peak "
        f"{metrics_log.peak_flops / 1e12:.3f} TFLOP/s ({metrics_log.peak_source})")
    preemption = PreemptionFlag()
    t, checkpoints = config.train, run.checkpoints
    try:
        for step in range(start_step + 1, t.num_steps + 1):
            first = step == start_step + 1
            with metrics_log.untimed() if first else contextlib.nullcontext():
                compile_start = time.perf_counter()
                batch = next(batches)
                metrics_log.count_languages(batch["language"])
                state, step_metrics = train_step(state, to_global(batch, run.rows_sharding))
                if first:
                    jax.block_until_ready(step_metrics)
                    log(f"step {step} compiled and ran in {time.perf_counter() - compile_start:.1f}s")
            metrics_log.add(step, step_metrics, timed=not first)
            last = step == t.num_steps
            if step % t.log_every == 0 or last:
                metrics_log.log_window(step)
            if step % t.eval_every == 0 or last:
                with metrics_log.untimed():
                    metrics_log.log_eval(step, run.evaluate(state.params))
            preempted = preemption.agreed()
            if step % config.checkpoint.every_steps == 0 or last or preempted:
                metrics_log.log_window(step)  # never checkpoint past an unreported non-finite step
                if metrics_log.skip_streak:   # nor params whose last updates were all skipped
                    log(f"no checkpoint at step {step}: its last {metrics_log.skip_streak} update(s) were "
                        "skipped as non-finite; the next checkpoint waits for a good update")
                else:
                    with metrics_log.untimed():
                        checkpoints.save(step, state, {"next_step": step, "global_batch": t.batch_size,
                                                       "process_count": jax.process_count(),
                                                       "shards": run.data.num_shards})
            if preempted:
                log(f"SIGTERM: {'saved' if not metrics_log.skip_streak else 'did not save'} step {step} "
                    f"in {checkpoints.directory}; exiting to be resumed")
                break
    finally:
        preemption.restore()
        checkpoints.close()
        metrics_log.close()
    return metrics_log.history


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
    """Held-out masked-LM loss/accuracy per language of checkpoint `step` (default: the newest
    readable one) in <workdir>."""
    run = Run(config, workdir, read_only=True)
    state = run.restore_or_init(step)
    results = run.evaluate(state.params)
    metrics_log = MetricsLog(workdir, config, config.train.num_steps)
    metrics_log.log_eval(int(state.step), results)
    metrics_log.close()
    run.checkpoints.close()
    return results
