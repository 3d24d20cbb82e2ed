"""Several processes in one: threads with the collectives data preparation uses (xlm_jax.data.text.Processes)."""
import threading

import numpy as np

from xlm_jax.data.text import Processes


def run_processes(count: int, task, timeout: float = 300.0) -> list:
    """[task(processes) of each of `count` stand-in processes]; raises the first one's exception.

    allgather and zero_first behave as jax's multihost_utils do across real processes, so the
    tasks run the same protocol as modes/train.py: a thread that fails breaks the barrier and
    the others stop too, as a failed process stops the run.
    """
    barrier = threading.Barrier(count, timeout=timeout)
    slots = [None] * count
    results, errors = [None] * count, [None] * count

    def processes(index: int) -> Processes:
        def allgather(x):
            slots[index] = np.array(x, np.int64)
            barrier.wait()
            gathered = np.stack(slots)
            barrier.wait()
            return gathered

        def zero_first(done, task):
            result = task(print) if index == 0 else None
            barrier.wait()
            return task(lambda _: None) if index else result

        return Processes(index, count, allgather, zero_first)

    def run(index: int) -> None:
        try:
            results[index] = task(processes(index))
        except BaseException as e:   # noqa: BLE001 - handed to the caller
            errors[index] = e
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if failed or any(errors):
        raise failed[0] if failed else errors[0]
    return results
