"""The chips a plan can compile for, by the names users rent them under.

`v5p-128`, `v4-32`, `v5e-256`, `v6e-64` are Cloud TPU slice names (v4 and v5p count
TensorCores, two per chip, which run as one "megacore" device; v5e and v6e count chips);
`8xH100`, `16xH200`, `8xA100` are GPU hosts of 8 (more than 8 means several hosts). A
target gives compile-only devices (`jax.experimental.topologies`): the program the real
slice would run is compiled on this machine, from libtpu (the `tpu` extra) or jax's CUDA
plugin with a target description of the chip (the `plan` extra), without the hardware.

Chip numbers are the vendors' published ones: peak dense bf16 FLOP/s, HBM capacity and
bandwidth, and the bandwidth one chip has to the others (TPU ICI; GPU NVLink one way,
and the host's network per GPU where a target spans hosts). They feed the roofline only.
"""
import contextlib
import dataclasses
import math
import os
import re

from xlm_jax import extras
from xlm_jax.errors import ConfigError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    platform: str              # "tpu" or "cuda"
    hbm_bytes: float
    peak_flops: float          # dense bf16 FLOP/s
    hbm_bandwidth: float       # bytes/s
    link_bandwidth: float      # bytes/s to the other chips (ICI, NVLink one way)
    network_bandwidth: float = 0.0   # GPUs: bytes/s per GPU between hosts
    topology_prefix: str = ""  # libtpu's name for the generation ("v5" is v5p)
    megacore: bool = False     # two TensorCores per chip, counted in the slice name
    torus_dims: int = 3        # TPU slice shape: 3D (v4, v5p) or 2D (v5e, v6e)
    gpu_device_info: tuple = ()   # GPUs: the fields of XLA's GpuDeviceInfoProto for the chip


CHIPS = {
    # Cloud TPU docs: v4 275 TFLOP/s, 32 GiB at 1200 GB/s; ICI per chip from the pod's 1.1 PB/s
    # all-reduce bandwidth over 4096 chips. v5p 459 TFLOP/s, 95 GiB at 2765 GB/s, ICI 4800 Gbps.
    # v5e 197 TFLOP/s, 16 GiB at 819 GB/s, ICI 1600 Gbps. v6e 918 TFLOP/s, 32 GiB at 1640 GB/s,
    # ICI 3584 Gbps.
    "v4": Chip("TPU v4", "tpu", 32 * GiB, 275e12, 1.2e12, 1.1e15 / 4096, topology_prefix="v4", megacore=True),
    "v5p": Chip("TPU v5p", "tpu", 95 * GiB, 459e12, 2.765e12, 600e9, topology_prefix="v5", megacore=True),
    "v5e": Chip("TPU v5e", "tpu", 16 * GiB, 197e12, 819e9, 200e9, topology_prefix="v5e", torus_dims=2),
    "v6e": Chip("TPU v6e", "tpu", 32 * GiB, 918e12, 1.64e12, 448e9, topology_prefix="v6e", torus_dims=2),
    # NVIDIA datasheets (SXM): H100 80 GB HBM3 at 3.35 TB/s, H200 141 GB HBM3e at 4.8 TB/s, both
    # 989 TFLOP/s dense bf16 and NVLink 900 GB/s (450 one way); A100 80 GB at 2.04 TB/s, 312
    # TFLOP/s, NVLink 600 GB/s. Between hosts: one 400 Gb/s NIC per GPU (200 Gb/s for A100).
    "H100": Chip("NVIDIA H100 80GB HBM3", "cuda", 84_942_979_072, 989e12, 3.35e12, 450e9, 50e9,
                 gpu_device_info=(("core_count", 132), ("fpus_per_core", 128), ("shared_memory_per_core", 233472),
                                  ("shared_memory_per_block_optin", 232448), ("l2_cache_size", 52428800),
                                  ("clock_rate_ghz", 1.98), ("memory_bandwidth", 3352320000000),
                                  ("device_memory_size", 84942979072), ("compute_capability", (9, 0)))),
    "H200": Chip("NVIDIA H200", "cuda", 150_754_820_096, 989e12, 4.8e12, 450e9, 50e9,
                 gpu_device_info=(("core_count", 132), ("fpus_per_core", 128), ("shared_memory_per_core", 233472),
                                  ("shared_memory_per_block_optin", 232448), ("l2_cache_size", 52428800),
                                  ("clock_rate_ghz", 1.98), ("memory_bandwidth", 4800000000000),
                                  ("device_memory_size", 150754820096), ("compute_capability", (9, 0)))),
    "A100": Chip("NVIDIA A100-SXM4-80GB", "cuda", 85_899_345_920, 312e12, 2.039e12, 300e9, 25e9,
                 gpu_device_info=(("core_count", 108), ("fpus_per_core", 64), ("shared_memory_per_core", 167936),
                                  ("shared_memory_per_block_optin", 166912), ("l2_cache_size", 41943040),
                                  ("clock_rate_ghz", 1.41), ("memory_bandwidth", 2039000000000),
                                  ("device_memory_size", 85899345920), ("compute_capability", (8, 0)))),
}
GPUS_PER_HOST = 8
EXAMPLES = "v4-32, v5p-128, v5e-256, v6e-64, 8xH100, 16xH200, 8xA100"


@dataclasses.dataclass(frozen=True)
class Target:
    """`num_devices` jax devices of `chip` (a megacore TPU chip is one device) on `num_hosts` hosts."""
    name: str
    chip: Chip
    num_devices: int
    num_hosts: int
    attached: bool = False     # this machine's own devices, not compile-only ones

    @property
    def topology(self) -> str:
        """libtpu's topology name (v5p-32: "v5:2x2x4"), or the CUDA plugin's slices x hosts x GPUs."""
        if self.chip.platform == "cuda":
            return f"1x{self.num_hosts}x{self.num_devices // self.num_hosts}"
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, tpu_slice_shape(self.num_devices, self.chip)))}"

    @property
    def collective_bandwidth(self) -> float:
        """Bytes/s one device moves in a collective: the network's where the target spans hosts."""
        if self.chip.platform == "cuda" and self.num_hosts > 1:
            return self.chip.network_bandwidth
        return self.chip.link_bandwidth

    def devices(self) -> list:
        """Compile-only devices of the target (none of them is, or needs to be, attached); call
        inside `compiling()`."""
        if self.attached:
            import jax
            return jax.devices()
        from jax.experimental import topologies
        if self.chip.platform == "tpu":
            extras.require("libtpu", f"compiling for {self.name}")
            description = topologies.get_topology_desc(
                platform="tpu", topology_name=self.topology, chips_per_host_bounds=(2, 2, 1),
                chip_config_name="megacore" if self.chip.megacore else "default", num_slices=1)
        else:
            extras.require("jax_cuda12_plugin", f"compiling for {self.name}")
            description = topologies.get_topology_desc(platform="cuda", topology=self.topology,
                                                       target_config=gpu_target_config(self.chip))
        return list(description.devices)

    @contextlib.contextmanager
    def compiling(self):
        """What compiling for the target without it needs, for as long as it takes (and no longer:
        the settings would mislead a later jax process of this one's on a real machine)."""
        settings = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}   # several plans (tests) at once
        if self.chip.platform == "tpu" and not self.attached:
            # libtpu looks for the TPU VM it runs on when it loads, and prints a page when there is none.
            settings.update(TPU_SKIP_MDS_QUERY="1", TPU_WORKER_HOSTNAMES="localhost", TPU_ACCELERATOR_TYPE=self.name)
        saved = {name: os.environ.get(name) for name in settings}
        os.environ.update({name: value for name, value in settings.items() if saved[name] is None})
        try:
            with _cudnn_version_of_the_target(self.chip):
                yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)


@contextlib.contextmanager
def _cudnn_version_of_the_target(chip: Chip):
    """jax asks the local cuDNN library for its version before it emits cuDNN attention; a machine
    that only compiles for a GPU has none, so the target's (its description's 9.10) answers."""
    if chip.platform != "cuda":
        yield
        return
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
    original = cudnn_attention.check_cudnn_version
    try:
        original()
        local = True
    except RuntimeError:
        local = False
    if not local:
        cudnn_attention.check_cudnn_version = lambda: 91000
    try:
        yield
    finally:
        cudnn_attention.check_cudnn_version = original


def tpu_slice_shape(num_chips: int, chip: Chip) -> tuple[int, ...]:
    """The slice's chip grid, as Cloud TPU lays it out: from 2x2(x1), double the last of the
    shortest axes until the chips are there (v5p-32 = 16 chips = 2x2x4, v5p-64 = 2x4x4,
    v5e-256 = 16x16)."""
    shape = [2, 2, 1] if chip.torus_dims == 3 else [2, 2]
    while math.prod(shape) < num_chips:
        shortest = min(shape)
        shape[max(i for i, size in enumerate(shape) if size == shortest)] *= 2
    return tuple(shape)


def parse_target(name: str) -> Target:
    """A Target from a slice name (`v5p-128`) or a GPU count (`8xH100`); ConfigError otherwise."""
    field = "config field `plan.target`"
    tpu = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
    gpu = re.fullmatch(r"(\d+)x(H100|H200|A100)", name)
    if tpu:
        chip, count = CHIPS[tpu.group(1)], int(tpu.group(2))
        chips = count // 2 if chip.megacore else count
        if chips < 4 or chips & (chips - 1) or (chip.megacore and count % 2):
            unit = "TensorCores (2 per chip)" if chip.megacore else "chips"
            raise ConfigError(f"{field}: {name!r} is not a slice this tool lays out; the number counts {unit} "
                              f"and must make a power of two of at least 4 chips, e.g. {tpu.group(1)}-"
                              f"{8 if chip.megacore else 4}, {tpu.group(1)}-{64 if chip.megacore else 32}")
        return Target(name, chip, chips, max(1, chips // 4))
    if gpu:
        chip, count = CHIPS[gpu.group(2)], int(gpu.group(1))
        if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
            raise ConfigError(f"{field}: {name!r}: more than {GPUS_PER_HOST} GPUs means whole hosts of "
                              f"{GPUS_PER_HOST}; use a multiple of {GPUS_PER_HOST}")
        return Target(name, chip, count, max(1, count // GPUS_PER_HOST))
    raise ConfigError(f"{field}: unknown target {name!r}; use a Cloud TPU slice or a GPU count, e.g. {EXAMPLES} "
                      "(or \"\" for this machine's own devices)")


def gpu_target_config(chip: Chip) -> str:
    """XLA's GpuTargetConfigProto for `chip`, in text form: what the GPU compiler would otherwise
    ask an attached GPU."""
    info = dict(chip.gpu_device_info)
    major, minor = info.pop("compute_capability")
    fields = {"threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 49152,
              "threads_per_core_limit": 2048, "block_dim_limit_x": 2**31 - 1, "block_dim_limit_y": 65535,
              "block_dim_limit_z": 65535, "registers_per_core_limit": 65536, "registers_per_block_limit": 65536,
              **info}
    body = " ".join(f"{key}: {value}" for key, value in fields.items())
    return (f"gpu_device_info {{ {body} cuda_compute_capability {{ major: {major} minor: {minor} }} }} "
            f'platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 10 }} '
            f'device_description_str: "{chip.name}"')

