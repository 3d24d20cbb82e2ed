"""A run before its first step: config checks, mesh, data, model, sharded state and resume.

`Run(config, workdir)` does everything train_and_evaluate and evaluate_checkpoint share;
`restore_or_init` gives the state to start from (a checkpoint, imported weights, or new).
"""
import jax
from jax.experimental import multihost_utils

from xlm_jax import config as config_lib
from xlm_jax.data.prepare import prepare_data
from xlm_jax.data.streams import PAIR_KINDS
from xlm_jax.data.shards import num_shards
from xlm_jax.data.text import read_text
from xlm_jax.data.tokenizers import TOKENIZER_FILES, tokenizer_exists
from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.languages import record_run_languages
from xlm_jax.evaluation.registry import build_evaluators
from xlm_jax.evaluation.runner import EvaluationRunner
from xlm_jax.interop.hf import adopt_hf_model, import_hf
from xlm_jax.interop.vocab import adopt_vocab_extension, extend_params
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.objectives.registry import build_objectives, streams
from xlm_jax.models.vocab_padding import padded_vocab_size, resize_vocab_rows, vocab_padding_params
from xlm_jax.parallel.mesh import batch_sharding, batch_shards, make_mesh
from xlm_jax.parallel.multihost import log, process_zero_first, this_process
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.plan.memory import check_fits
from xlm_jax.train.checkpoints import Checkpoints, abstract_with_shardings
from xlm_jax.train.heldout import eval_sets, evaluate_languages
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import (count_params, create_train_state, model_params, state_shardings,
                                 train_state_from_params)
from xlm_jax.train.step import make_eval_step
from xlm_jax.workdir import make_workdir


def check_batch_layout(config, mesh, rules) -> None:
    """Every objective's batch splits into whole microbatches over the mesh's batch shards and
    over the processes; else a ConfigError naming the batch size's field."""
    t = config.train
    shards = batch_shards(mesh, rules)
    for objective in build_objectives(config):
        own = objective.options.batch_size and objective.batch_name == objective.name
        field = f"{objective.name}.batch_size" if own else "train.batch_size"
        size = objective.batch_size
        per_micro, rest = divmod(size, t.grad_accum_steps)
        if rest or per_micro % shards:
            raise ConfigError(
                f"config field `{field}`: {size} / train.grad_accum_steps {t.grad_accum_steps} = "
                f"{size / t.grad_accum_steps:g} examples per microbatch, not a multiple of the {shards} "
                f"batch shards of mesh {dict(mesh.shape)} (rules {config.mesh.rules!r})")
        if size % jax.process_count():
            raise ConfigError(f"config field `{field}`: {size} is not divisible by the "
                              f"{jax.process_count()} processes")


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
        self._check_fits()   # before the corpus is read or anything compiles
        log(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in "
            f"{jax.process_count()} process(es); mesh {dict(self.mesh.shape)}, "
            f"rules {config.mesh.rules!r}")
        self.vocab_extension = None  # (imported tokenizer, extended tokenizer) with data.extend_vocab_pieces
        source = config.init_from.removeprefix("hf:")
        if source:   # before the corpus is read: a bad directory fails at once
            adopt_hf_model(config, source, workdir)
        self.streams = streams(build_objectives(config))   # what to read, before the corpus says its languages
        pairs = any(spec.kind in PAIR_KINDS for spec in self.streams)
        processes = this_process()
        text = read_text(config, processes, log, pairs=pairs)   # this process's shards; counts agreed by all
        if source:
            resuming = self.checkpoints.latest_step() is not None
            multihost_utils.sync_global_devices("imported tokenizer in place")
            self.vocab_extension = process_zero_first("vocabulary extended", lambda log: adopt_vocab_extension(
                config, source, workdir, resuming=resuming, log=log, text=text))
            config_lib.validate(config)
            log(f"model: {config.model.num_layers} layers, hidden {config.model.hidden_size}, vocab "
                f"{config.model.vocab_size} from {source}")
        self.data = prepare_data(config, workdir, log, processes=processes, text=text, pairs=pairs)
        if not read_only:   # language id i is data.languages[i]: evaluations read it back
            record_run_languages(workdir, self.data.languages, log)
        if self.evaluation:
            self.evaluation.check_languages(config.model, self.data.tokenizer, self.data.languages)
        self.objectives = build_objectives(config, self.data.languages)   # now with the corpus's languages
        log("objectives: " + ", ".join(f"{o.name} x{o.weight:g} (batch {o.batch_size}"
                                       + (f", {o.batch_name}'s" if o.batch_name != o.name else "") + ")"
                                       for o in self.objectives)
            + f"; schedule {config.objective_schedule!r}")
        self.model = MaskedLM(config.model)
        self.optimizer = make_optimizer(config.train)
        self.abstract_state, self.shardings = state_shardings(
            self.model, self.objectives, self.optimizer, config, self.mesh, self.rules)
        self.rows_sharding = batch_sharding(self.mesh, self.rules)
        self.eval_step = make_eval_step(self.model, self.mesh, self.rules, model_params(self.shardings.params),
                                        self.rows_sharding)
        self.eval_sets = eval_sets(self.data, config)
        if self.evaluation:
            self.evaluation.heldout = self.evaluate

    def _check_fits(self) -> None:
        """ConfigError, with --mode=plan's advice, when the step cannot fit these devices' memory."""
        # Before the corpus says its languages: a two-language discriminator (a few KiB) stands in.
        objectives = build_objectives(self.config, ["language_0", "language_1"])
        model, optimizer = MaskedLM(self.config.model), make_optimizer(self.config.train)
        abstract_state, shardings = state_shardings(model, objectives, optimizer, self.config, self.mesh, self.rules)
        check_fits(self.config, objectives, abstract_state, shardings, self.mesh, self.rules)

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
            state = self.new_state()
            padding = vocab_padding_params(self.config.model)
            log(f"initialized {count_params(state.params) - padding:,} parameters"
                + (f" (and {padding:,} of vocabulary padding, always zero)" if padding else ""))
            return state
        imported = import_hf(self.config.init_from.removeprefix("hf:"))
        params = imported.params
        if self.vocab_extension:  # new rows: means of their pieces' old-tokenization rows
            params = extend_params(params, *self.vocab_extension)
        new_parts = ([] if imported.has_head else ["lm_head"]) + (["objectives"] if "objectives" in
                                                                   self.abstract_state.params else [])
        if new_parts:  # an encoder-only checkpoint, objective heads: they start from scratch
            fresh = jax.device_get(self.new_state().params)
            params = {**params, **{part: fresh[part] for part in new_parts}}
        log(f"initialized from {self.config.init_from}"
            + ("" if imported.has_head else " (no MLM head there: a new one is trained)")
            + (f"; left out {', '.join(imported.dropped)}" if imported.dropped else ""))
        params = resize_vocab_rows(params, padded_vocab_size(self.config.model))   # this run's layout
        return train_state_from_params(params, self.optimizer, self.shardings, self.objectives)

    def new_state(self):
        return create_train_state(self.model, self.objectives, self.optimizer, self.config, self.mesh,
                                  self.rules, self.shardings)

    def data_state(self, step: int) -> dict:
        """The data iterator's position saved with checkpoint `step` (resume_note reads it back)."""
        return {"next_step": step, "global_batch": self.config.train.batch_size,
                "process_count": jax.process_count(), "shards": self.data.num_shards}

    def evaluate(self, params) -> dict:
        """Held-out masked-LM loss and accuracy per language (the `mlm` evaluator's numbers)."""
        return evaluate_languages(self.eval_step, params, self.eval_sets, self.rows_sharding)

    def subject(self, state) -> Subject:
        """The model at `state`, for the evaluators: params where training keeps them."""
        return Subject(self.config.model, model_params(state.params), self.data.tokenizer, self.mesh, self.rules,
                       step=int(state.step), seed=self.config.train.seed, languages=tuple(self.data.languages))
