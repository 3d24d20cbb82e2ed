"""Orbax checkpoints of the train state and the data iterator, with the config beside.

<workdir>/checkpoints/<step>/{state,data}   written atomically by orbax (a killed save
                                            leaves a temporary dir that is ignored)
<workdir>/config.json                       the run's config, for load() and resume checks
<workdir>/tokenizer.{model,wordpiece.json,bytes.json}   the run's tokenizer, written by the data pipeline
"""
import os

import flax
import jax
import orbax.checkpoint as ocp

from xlm_jax.errors import CheckpointError
from xlm_jax.jsonfiles import read_json_object


def _flat_shapes(tree) -> dict[str, tuple]:
    flat = flax.traverse_util.flatten_dict(tree, sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


class Checkpoints:
    """Saves and restores (TrainState, data-iterator state) under <workdir>/checkpoints."""

    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        """Starts an async save; arrays are copied off the devices before this returns."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

    def restore(self, abstract_state, step: int | None = None):
        """Restores into `abstract_state` (ShapeDtypeStructs carrying shardings).

        Raises CheckpointError if the checkpoint holds another model (a parameter
        missing, extra, or of another shape), naming the first difference.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self.check_compatible(abstract_state.params, step)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def check_compatible(self, abstract_params, step: int) -> None:
        stored = self._manager.item_metadata(step).state
        stored = getattr(stored, "tree", stored)["params"]
        want, have = _flat_shapes(abstract_params), _flat_shapes(stored)
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
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


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
    import ml_collections
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist: is {workdir} an xlm_jax run directory?")
    return ml_collections.ConfigDict(read_json_object(
        path, "every training start writes it: run the run's training command once more (it resumes "
        "and rewrites config.json), or restore the file from a copy", CheckpointError))
