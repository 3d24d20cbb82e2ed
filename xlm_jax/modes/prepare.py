"""A run before its first step, prepared once: config, mesh, memory check, corpus, tokenizer, trainer.

The order is the point. Whatever the config leaves to the inputs is resolved first (the
architecture of an `init_from=hf:DIR` model), then the config is validated once, so a typo
fails before anything is read or compiled; then the mesh, the up-front memory check, the
corpus and the tokenizer; then the trainer (train/builder.py) for the corpus's languages.
`Run.config` is the caller's config with those inputs resolved, a copy: the caller's is not
touched, and nothing changes the run's afterwards. The one field set after validation is
`model.vocab_size` of a vocabulary extension (`data.extend_vocab_pieces`), which only the
corpus can say and which only grows the validated size.
"""
import jax
from jax.experimental import multihost_utils

from xlm_jax.data.prepare import prepare_data
from xlm_jax.data.shards import num_shards
from xlm_jax.data.streams import PAIR_KINDS
from xlm_jax.data.text import Processes, read_text
from xlm_jax.data.tokenizers import TOKENIZER_FILES, tokenizer_exists
from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.heldout_mlm import HeldoutText
from xlm_jax.evaluation.languages import record_run_languages
from xlm_jax.evaluation.registry import build_evaluators
from xlm_jax.evaluation.runner import EvaluationRunner
from xlm_jax.interop.hf import adopt_hf_tokenizer, hf_architecture, import_hf
from xlm_jax.interop.vocab import adopt_vocab_extension, extend_params
from xlm_jax.models.vocab_padding import padded_vocab_size, resize_vocab_rows, vocab_padding_params
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.multihost import allgather_int64, log, process_zero_first
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.plan.memory import check_fits
from xlm_jax.plan.targets import parse_target
from xlm_jax.train import builder
from xlm_jax.train.checkpoints import Checkpoints
from xlm_jax.train.state import count_params, model_params
from xlm_jax.workdir import make_workdir


def validate(config):
    """Every section of `config`, each by the code that owns it: the engine's (schema, data,
    objectives: train/builder.validate), the evaluators', a plan target's. Raises ConfigError
    naming the first bad field; returns the config."""
    builder.validate(config)
    build_evaluators(config.evals)
    if config.plan.target:
        parse_target(config.plan.target)
    return config


def this_process() -> Processes:
    """This process among the run's, with the collectives data preparation needs."""
    return Processes(jax.process_index(), jax.process_count(), allgather_int64, process_zero_first)


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
    """Everything a run needs before its first step (see the module docstring).

    `read_only` (evaluation) writes nothing to the workdir: it needs a checkpoint and the
    tokenizer that trained it, and moves no damaged checkpoint aside.
    """

    def __init__(self, config, workdir: str, read_only: bool = False):
        config = config.copy_and_resolve_references()
        source = config.init_from.removeprefix("hf:") if config.init_from.startswith("hf:") else ""
        if source:   # a bad directory fails at once, before the corpus is read (validate names a bad form)
            config.model.update(hf_architecture(source))
        self.config, self.workdir = validate(config), workdir
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
        # evaluation, modes/evaluate.py, makes its own for the evaluators it was asked for).
        watched = [e for e in build_evaluators(config.evals) if e.options.every_steps]
        self.evaluation = None if read_only else EvaluationRunner(watched, workdir, log)
        self.mesh = make_mesh(config.mesh)
        self.rules = logical_axis_rules(config.mesh.rules)
        before_corpus = builder.build_trainer(config, self.mesh, self.rules)
        check_fits(config, before_corpus.objectives, before_corpus.abstract_state, before_corpus.shardings,
                   self.mesh, self.rules)   # before the corpus is read or anything compiles
        log(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in "
            f"{jax.process_count()} process(es); mesh {dict(self.mesh.shape)}, "
            f"rules {config.mesh.rules!r}")
        self.vocab_extension = None  # (imported tokenizer, extended tokenizer) with data.extend_vocab_pieces
        if source:
            adopt_hf_tokenizer(source, workdir, config.model.vocab_size)
        self.streams = before_corpus.streams   # what to read, before the corpus says its languages
        pairs = any(spec.kind in PAIR_KINDS for spec in self.streams)
        processes = this_process()
        text = read_text(config, processes, log, pairs=pairs)   # this process's shards; counts agreed by all
        if source:
            resuming = self.checkpoints.latest_step() is not None
            multihost_utils.sync_global_devices("imported tokenizer in place")
            self.vocab_extension = process_zero_first("vocabulary extended", lambda log: adopt_vocab_extension(
                config, source, workdir, resuming=resuming, log=log, text=text))
            log(f"model: {config.model.num_layers} layers, hidden {config.model.hidden_size}, vocab "
                f"{config.model.vocab_size} from {source}")
        config.lock()
        self.data = prepare_data(config, workdir, log, processes=processes, text=text, pairs=pairs)
        if not read_only:   # language id i is data.languages[i]: evaluations read it back
            record_run_languages(workdir, self.data.languages, log)
        if self.evaluation:
            self.evaluation.check_languages(config.model, self.data.tokenizer, self.data.languages)
        self.trainer = builder.build_trainer(config, self.mesh, self.rules, self.data.languages)
        log("objectives: " + ", ".join(f"{o.name} x{o.weight:g} (batch {o.batch_size}"
                                       + (f", {o.batch_name}'s" if o.batch_name != o.name else "") + ")"
                                       for o in self.trainer.objectives)
            + f"; schedule {config.objective_schedule!r}")
        self.heldout = HeldoutText(self.data, config, self.mesh, self.rules,
                                   model_params(self.trainer.shardings.params))
        if self.evaluation:
            self.evaluation.heldout = self.heldout

    def restore_or_init(self, step: int | None = None):
        """Checkpoint `step`, or the newest readable one (see Checkpoints.restore), or a new state."""
        trainer, config = self.trainer, self.config
        if self.checkpoints.latest_step() is not None:
            state, data_state = self.checkpoints.restore(trainer.restore_target(), step, log=log)
            log(f"resumed from {self.checkpoints.directory}/{int(state.step)} (data iterator at "
                f"step {data_state['next_step']}, written by {data_state['process_count']} "
                f"process(es))")
            note = resume_note(data_state, config, jax.process_count(), self.checkpoints.directory)
            if note:
                log(note)
            return state
        if not config.init_from:
            state = trainer.new_state()
            padding = vocab_padding_params(config.model)
            log(f"initialized {count_params(state.params) - padding:,} parameters"
                + (f" (and {padding:,} of vocabulary padding, always zero)" if padding else ""))
            return state
        imported = import_hf(config.init_from.removeprefix("hf:"))
        params = imported.params
        if self.vocab_extension:  # new rows: means of their pieces' old-tokenization rows
            params = extend_params(params, *self.vocab_extension)
        new_parts = ([] if imported.has_head else ["lm_head"]) + (["objectives"] if "objectives" in
                                                                   trainer.abstract_state.params else [])
        if new_parts:  # an encoder-only checkpoint, objective heads: they start from scratch
            fresh = jax.device_get(trainer.new_state().params)
            params = {**params, **{part: fresh[part] for part in new_parts}}
        log(f"initialized from {config.init_from}"
            + ("" if imported.has_head else " (no MLM head there: a new one is trained)")
            + (f"; left out {', '.join(imported.dropped)}" if imported.dropped else ""))
        params = resize_vocab_rows(params, padded_vocab_size(config.model))   # this run's layout
        return trainer.state_from_params(params)

    def data_state(self, step: int) -> dict:
        """The data iterator's position saved with checkpoint `step` (resume_note reads it back)."""
        return {"next_step": step, "global_batch": self.config.train.batch_size,
                "process_count": jax.process_count(), "shards": self.data.num_shards}

    def subject(self, state) -> Subject:
        """The model at `state`, for the evaluators: params where training keeps them."""
        return Subject(self.config.model, model_params(state.params), self.data.tokenizer, self.mesh, self.rules,
                       step=int(state.step), seed=self.config.train.seed, languages=tuple(self.data.languages))
