"""Throughput, MFU and memory as a run sees them, and the run's TensorBoard writer.

MFU divides the model FLOPs of xlm_jax/models/flops.py by the peak of the devices here.
"""
import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip (vendor numbers), for MFU on accelerators.
ACCELERATOR_PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12, "NVIDIA L4": 121e12,
}


@functools.cache
def measured_cpu_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """f32 matmul FLOP/s of this CPU (best of a few runs): the honest denominator for CPU MFU.

    Every device of a CPU "mesh" shares the same cores, so this is the host's total.
    """
    cpu = jax.local_devices(backend="cpu")[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), cpu)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        seconds = min(seconds, time.perf_counter() - start)
    return 2 * size**3 / seconds


def peak_flops() -> tuple[float, str]:
    """(peak FLOP/s of all local devices together, where the number comes from)."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return measured_cpu_peak_flops(), "measured f32 matmul peak of this CPU"
    kind = device.device_kind
    for name, flops in ACCELERATOR_PEAK_FLOPS.items():
        if kind.startswith(name):
            return flops * jax.local_device_count(), f"{kind} bf16 dense peak"
    return float("nan"), f"unknown peak for {kind}"


def peak_memory_bytes() -> int:
    """Peak device memory where the backend reports it, else the process' peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(sum((d.memory_stats() or {}).get("peak_bytes_in_use", 0)
                       for d in jax.local_devices()))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class SummaryWriter:
    """TensorBoard event files in <workdir>/tensorboard, written by process 0 only.

    `tf.summary.scalar` lives in the tensorboard package, which TensorFlow 2.21 no longer
    installs; a training host needs no viewer. So scalars go through TensorFlow's own
    `tf.summary.write` with the scalar plugin's metadata: the same event records
    `tensorboard.summary.scalar` writes, which `tensorboard --logdir` (on any machine) reads.
    """

    def __init__(self, logdir: str, enabled: bool):
        self._writer = None
        if enabled:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2
            self._tf = tf
            self._writer = tf.summary.create_file_writer(logdir)
            self._scalar = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
                data_class=summary_pb2.DATA_CLASS_SCALAR)

    def scalars(self, step: int, values: dict) -> None:
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in values.items():
                self._tf.summary.write(name, self._tf.constant(float(value), self._tf.float32),
                                       metadata=self._scalar)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
