"""Orbax checkpoints of the train state and the data iterator, with the config beside.

<workdir>/checkpoints/<step>/{state,data}   written atomically by orbax (a killed save
                                            leaves a temporary dir that is ignored)
<workdir>/damaged_checkpoints/<step>        checkpoints a resume found unreadable, moved
                                            aside (never deleted) so training can go on
<workdir>/config.json                       the run's config, for load() and resume checks
<workdir>/tokenizer.{model,wordpiece.json,bytes.json}   the run's tokenizer, written by the data pipeline

A checkpoint can be damaged after orbax finished it (a disk filled up, a file truncated
or emptied by a copy, a file deleted by hand). Restoring the latest one then falls back
to the newest readable one and says which was skipped and why.
"""
import contextlib
import errno
import functools
import logging
import os
import shutil
import sys

import flax
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from xlm_jax.config import with_defaults
from xlm_jax.errors import CheckpointError
from xlm_jax.jsonfiles import read_json_object
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import state_shardings

DAMAGED_DIR = "damaged_checkpoints"


def _flat_shapes(tree) -> dict[str, tuple]:
    flat = flax.traverse_util.flatten_dict(tree, sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def why_unreadable(error: BaseException) -> str:
    """One line on what went wrong: the innermost cause (orbax and tensorstore wrap the real
    reason, such as a truncated file, in several layers), its type and first line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:240]}" + ("..." if len(text) > 240 else "")


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "RESOURCE_EXHAUSTED")
_NO_PERMISSION_TEXT = ("Permission denied", "PERMISSION_DENIED")


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**28 else f"{size / 2**20:.1f} MiB"


def _write_failure_kind(error: BaseException) -> str | None:
    """"full" (no space, a quota), "refused" (permission) or None, anywhere in the error's chain."""
    chain = list(_chain(error))
    texts = " ".join(str(e) for e in chain)
    if any(isinstance(e, OSError) and e.errno in _NO_SPACE for e in chain) or any(t in texts for t in _NO_SPACE_TEXT):
        return "full"
    if any(isinstance(e, PermissionError) for e in chain) or any(t in texts for t in _NO_PERMISSION_TEXT):
        return "refused"
    return None


class _QuietWriteFailures(logging.Filter):
    """Orbax's save threads log a full disk or a refused write with a traceback each (three or
    more), and asyncio reports each of its failed write tasks at exit, before and after the error
    reaches Checkpoints, which raises it as one line naming the step: those records are dropped,
    every other one passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        from_orbax = "orbax" in record.pathname or "orbax" in str(record.msg)
        return not (from_orbax and error is not None and _write_failure_kind(error))


def _quiet_abandoned_writes(previous):
    """When a save fails, orbax gives up on the event loop its writes run in while tensorstore
    still finishes some of them; each of those calls back into the closed loop and prints
    "Event loop is closed" (through sys.unraisablehook) while training goes on, before the failure
    reaches Checkpoints as one line. Those, and only those, are dropped."""

    def hook(unraisable):
        kind, value, traceback = unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
        last = traceback
        while last is not None and last.tb_next is not None:
            last = last.tb_next
        abandoned = (kind is RuntimeError and str(value) == "Event loop is closed" and last is not None
                     and "asyncio" in last.tb_frame.f_code.co_filename)
        if not abandoned:
            previous(unraisable)

    return hook


@functools.cache
def _quiet_orbax_write_failures() -> None:
    """Installs the two filters above, once per process, where checkpoints are written."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_QuietWriteFailures())
    sys.unraisablehook = _quiet_abandoned_writes(sys.unraisablehook)


def write_failure(error: BaseException, what: str, directory: str, needed: int | None) -> CheckpointError | None:
    """A CheckpointError in one line when `error` is a full disk, a quota or a permission refused
    while writing `what` under `directory`; None for any other error."""
    kind = _write_failure_kind(error)
    if kind is None:
        return None
    full = kind == "full"
    existing = directory
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if full:
        free = shutil.disk_usage(existing).free if existing else 0
        need = f"; it needs about {_gib(needed)}" if needed else ""
        return CheckpointError(f"{what} could not be written: no space left in {directory} ({_gib(free)} free{need}); "
                               "the checkpoints before it are intact: free some space (or move the run) and start "
                               "the same command again, it resumes from the last of them")
    return CheckpointError(f"{what} could not be written: permission denied in {directory} ({why_unreadable(error)}); "
                           "the checkpoints before it are intact: fix the directory's permissions and start the same "
                           "command again, it resumes from the last of them")


class Checkpoints:
    """Saves and restores (TrainState, data-iterator state) under <workdir>/checkpoints.

    `read_only` (evaluate, export, notebooks) creates, moves and deletes nothing.
    """

    def __init__(self, workdir: str, keep: int, async_save: bool = True, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        # Not orbax's own read_only option, which logs a warning at every load; this class
        # simply never saves or deletes when read-only.
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                               enable_async_checkpointing=async_save, create=not read_only)
        self._read_only, self._options = read_only, options
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})
        self._partial_reader = None   # reads a part of the state (restore(params_only=True))
        self._saving = (None, None)   # (step, bytes) of the latest save started
        if not read_only:
            _quiet_orbax_write_failures()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, data_state: dict) -> None:
        """Starts an async save; arrays are copied off the devices before this returns. A full disk
        or a refused write, here or when an earlier async save finishes, is a one-line
        CheckpointError; orbax writes each step to a temporary directory first, so the
        checkpoints before it stay whole."""
        assert not self._read_only, "a read-only Checkpoints never saves"
        with self._writing():   # the previous save, finished first (as orbax would): a failure there is its own
            self._manager.wait_until_finished()
        self._saving = (step, sum(x.nbytes for x in jax.tree.leaves(state)))
        with self._writing():
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except Exception as error:
            step, needed = self._saving
            what = f"checkpoint {self.directory}" + (f"/{step}" if step is not None else "")
            failure = write_failure(error, what, self.directory, needed)
            if failure is None:
                raise
            raise failure from None

    def restore(self, abstract_state, step: int | None = None, log=print, params_only: bool = False):
        """(state, data-iterator state) of checkpoint `step`, or of the newest readable one.

        `params_only`: abstract_state is {"step", "params"} of the model alone, and only those
        are read (no optimizer or objective state; the objectives' heads are left out).

        `abstract_state` holds ShapeDtypeStructs carrying shardings. Raises CheckpointError
        if the checkpoint holds another model (a parameter missing, extra, or of another
        shape), naming the first difference; if `step` is unreadable; or if no checkpoint
        is. Without `step`, unreadable newer checkpoints are logged and skipped; a writable
        manager moves them to <workdir>/damaged_checkpoints, so that training can save
        those steps again.
        """
        if step is not None:
            if step not in self.steps():
                raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; steps there: "
                                      f"{', '.join(map(str, self.steps())) or 'none'}")
            restored, why = self._attempt(abstract_state, step, params_only)
            if why:
                raise CheckpointError(f"checkpoint {self.directory}/{step} is unreadable ({why}); ask for "
                                      "another step, or for none to get the newest readable checkpoint")
            return restored
        damaged = []
        for candidate in reversed(self.steps()):
            restored, why = self._attempt(abstract_state, candidate, params_only)
            if why is None:
                if damaged:
                    self._set_aside([s for s, _ in damaged], log)
                return restored
            damaged.append((candidate, why))
            log(f"checkpoint {self.directory}/{candidate} is unreadable ({why}); trying the one before it")
        if not damaged:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        tried = "; ".join(f"step {s}: {why}" for s, why in damaged)
        raise CheckpointError(f"no readable checkpoint in {self.directory} (tried {tried}); nothing was "
                              "moved or deleted. Restore the files from a copy, or start over in a new "
                              "--workdir")

    def _attempt(self, abstract_state, step: int, params_only: bool):
        """(restored, None), or (None, why) if checkpoint `step` is unreadable. A CheckpointError
        (another model's checkpoint) is raised: that is not damage."""
        try:
            return self._restore_step(abstract_state, step, params_only), None
        except CheckpointError:
            raise
        except Exception as error:  # orbax, tensorstore and json raise many types for bad files
            return None, why_unreadable(error)

    def _restore_step(self, abstract_state, step: int, params_only: bool):
        if not params_only:
            self.check_compatible(abstract_state.params, step)
            has_extra = self._check_objective_state(abstract_state.extra, step)
            # A checkpoint written before TrainState had `extra` restores into the fields it has.
            target = abstract_state if has_extra else {"step": abstract_state.step, "params": abstract_state.params,
                                                       "opt_state": abstract_state.opt_state}
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
            state = restored.state if has_extra else abstract_state.replace(**restored.state, extra={})
            return state, restored.data
        self.check_compatible(abstract_state["params"], step, ignore=("objectives/",))
        if self._partial_reader is None:   # the same files, read by the handler that can skip parts
            self._partial_reader = ocp.CheckpointManager(
                self.directory, options=self._options,
                item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})
        restored = self._partial_reader.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract_state, partial_restore=True,
                                         restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
            data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def _set_aside(self, steps: list[int], log) -> None:
        """Moves damaged step directories out of orbax's sight (process 0; the others wait)."""
        if self._read_only:
            log(f"left the unreadable checkpoint(s) of step {', '.join(map(str, steps))} in place "
                f"(this mode writes nothing); resuming training moves them to {DAMAGED_DIR}/")
            return
        if jax.process_index() == 0:
            for step in steps:
                target = epath.Path(self.workdir) / DAMAGED_DIR / str(step)
                suffix = 1
                while target.exists():
                    suffix += 1
                    target = target.with_name(f"{step}.{suffix}")
                target.parent.mkdir(parents=True, exist_ok=True)
                (epath.Path(self.directory) / str(step)).rename(target)
                log(f"moved the unreadable checkpoint of step {step} to {target} (not deleted)")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("damaged checkpoints set aside")
        self._manager.reload()
        if self._partial_reader is not None:
            self._partial_reader.reload()

    def _stored_state(self, step: int) -> dict:
        stored = self._manager.item_metadata(step).state
        return getattr(stored, "tree", stored)  # damaged metadata fails here: not an error of ours

    def _check_objective_state(self, abstract_extra, step: int) -> bool:
        """Whether the checkpoint has TrainState.extra; a CheckpointError if it holds the state of
        other objectives than `abstract_extra` (XLCo's queue, say) or lacks theirs."""
        stored = self._stored_state(step).get("extra")
        have, want = sorted(stored or {}), sorted(abstract_extra)
        if have != want:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} holds the state of objective(s) "
                f"{', '.join(have) or 'none'}, this config's objectives keep state for {', '.join(want) or 'none'}: "
                "resume with the objectives that wrote it (see config.json there), or use a new --workdir")
        return stored is not None

    def check_compatible(self, abstract_params, step: int, ignore: tuple[str, ...] = ()) -> None:
        """Raises CheckpointError unless the stored params are `abstract_params` (but for paths
        starting with one of `ignore`)."""
        want, have = _flat_shapes(abstract_params), _flat_shapes(self._stored_state(step)["params"])
        have = {path: shape for path, shape in have.items() if not path.startswith(ignore)}
        hint = ("the checkpoint was written by a run with a different model config; "
                "use a new --workdir or the config that wrote it (see config.json there)")
        for path in sorted(set(want) | set(have)):
            if path not in have:
                raise CheckpointError(f"checkpoint {self.directory}/{step} has no parameter "
                                      f"{path}: {hint}")
            if path not in want:
                raise CheckpointError(f"checkpoint {self.directory}/{step} has parameter {path} "
                                      f"that this model does not: {hint}")
            if want[path] != have[path]:
                raise CheckpointError(f"checkpoint {self.directory}/{step}: parameter {path} has "
                                      f"shape {have[path]}, this model expects {want[path]}: {hint}")

    def wait(self) -> None:
        with self._writing():
            self._manager.wait_until_finished()

    def close(self) -> None:
        with self._writing():
            self._manager.wait_until_finished()
        self._manager.close()
        if self._partial_reader is not None:
            self._partial_reader.close()


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)


def save_config(workdir: str, config) -> None:
    """config.json beside the checkpoints; written to a temp name, then renamed."""
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_config(workdir: str):
    """The run's config.json, with fields it predates filled in from the defaults."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist: is {workdir} an xlm_jax run directory?")
    return with_defaults(ml_collections.ConfigDict(read_json_object(
        path, "every training start writes it: run the run's training command once more (it resumes "
        "and rewrites config.json), or restore the file from a copy", CheckpointError)))


def restore_params(config, workdir: str, mesh, rules, step: int | None = None, log=print):
    """(params, step) of checkpoint `step` (default: the newest readable) of a run directory,
    sharded on `mesh` by `rules`, read-only; for evaluation and notebooks: the model's params
    only, not the objectives' heads or state, nor the optimizer's."""
    abstract, shardings = state_shardings(MaskedLM(config.model), [], make_optimizer(config.train), config,
                                          mesh, rules)
    target = abstract_with_shardings(abstract, shardings)
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, async_save=False, read_only=True)
    try:
        state, _ = checkpoints.restore({"step": target.step, "params": target.params}, step, log=log,
                                       params_only=True)
    finally:
        checkpoints.close()
    return state["params"], int(state["step"])
