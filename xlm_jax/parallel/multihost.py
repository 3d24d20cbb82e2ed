"""What every process of a run shares: one log, one decision to stop, one global batch.

Every process runs the same code; these helpers are where they meet. Only process 0
prints, SIGTERM on any process stops all of them at the same step, each process' rows
become one global jax.Array, and data preparation gets the collectives it needs
(`allgather_int64`, `process_zero_first`, handed to it by the run) without importing jax itself.
"""
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


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


def to_global(local_batch, sharding):
    """This process' rows -> one global jax.Array per array (of a dict of batches, say), sharded
    over the mesh."""
    return jax.tree.map(lambda rows: jax.make_array_from_process_local_data(sharding, rows), local_batch)


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

