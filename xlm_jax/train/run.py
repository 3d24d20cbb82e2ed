"""A run before its first step: config checks, mesh, data, model, sharded state and resume.

`Run(config, workdir)` does everything train_and_evaluate and evaluate_checkpoint share;
`restore_or_init` gives the state to start from (a checkpoint, imported weights, or new).
"""
import jax
from jax.experimental import multihost_utils

from xlm_jax import config as config_lib
from xlm_jax.data.pipeline import prepare_data
from xlm_jax.data.shards import num_shards
from xlm_jax.data.text import read_text
from xlm_jax.data.tokenizers import TOKENIZER_FILES, tokenizer_exists
from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.registry import build_evaluators
from xlm_jax.evaluation.runner import EvaluationRunner
from xlm_jax.interop.hf import adopt_hf_model, import_hf
from xlm_jax.interop.vocab import adopt_vocab_extension, extend_params
from xlm_jax.models.heads import MaskedLM
from xlm_jax.models.vocab_padding import padded_vocab_size, resize_vocab_rows, vocab_padding_params
from xlm_jax.parallel.mesh import batch_sharding, batch_shards, make_mesh
from xlm_jax.parallel.multihost import log, process_zero_first, this_process
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.checkpoints import Checkpoints, abstract_with_shardings
from xlm_jax.train.heldout import eval_sets, evaluate_languages
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import (count_params, create_train_state, state_shardings,
                                 train_state_from_params)
from xlm_jax.train.step import make_eval_step
from xlm_jax.workdir import make_workdir


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
        # Training's evaluators: their inputs are checked before the corpus is read (read-only
        # evaluation, train/evaluate.py, makes its own for the evaluators it was asked for).
        watched = [e for e in build_evaluators(config.evals) if e.options.every_steps]
        self.evaluation = None if read_only else EvaluationRunner(watched, workdir, log)
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
        if self.evaluation:
            self.evaluation.heldout = self.evaluate

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

    def data_state(self, step: int) -> dict:
        """The data iterator's position saved with checkpoint `step` (resume_note reads it back)."""
        return {"next_step": step, "global_batch": self.config.train.batch_size,
                "process_count": jax.process_count(), "shards": self.data.num_shards}

    def evaluate(self, params) -> dict:
        """Held-out masked-LM loss and accuracy per language (the `mlm` evaluator's numbers)."""
        return evaluate_languages(self.eval_step, params, self.eval_sets, self.rows_sharding)

    def subject(self, state) -> Subject:
        """The model at `state`, for the evaluators: params where training keeps them."""
        return Subject(self.config.model, state.params, self.data.tokenizer, self.mesh, self.rules,
                       step=int(state.step), seed=self.config.train.seed)
