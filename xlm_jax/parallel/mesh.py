"""The device mesh from `config.mesh`, and multi-process start-up."""
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from xlm_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 to "all remaining devices" and checks the product."""
    sizes = [mesh_config[a] for a in MESH_AXES]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ConfigError(
                f"config field `mesh`: {dict(zip(MESH_AXES, sizes))} needs the device count "
                f"({num_devices}) to be divisible by {fixed}")
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config field `mesh`: data*fsdp*tensor = {'*'.join(map(str, sizes))} = {math.prod(sizes)} "
            f"but there are {num_devices} devices; set one axis to -1 to use all of them")
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (linen's logical rules need Auto).

    The devices are laid out along the chips' physical links where jax knows how; a shape
    that does not map onto them (fsdp 32 x tensor 2 on a v6e's 8x8 grid) splits physical
    axes instead."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=axis_types)


def on_mesh(fn, mesh, rules):
    """fn, to be jitted, traced with the mesh's axes and the logical-axis rules in context.

    Both are needed for the activations' `nn.with_logical_constraint`s to act: without a mesh
    in context flax drops them silently, and XLA may then keep, e.g., the MLP activation of
    every layer unsharded on every device (measured on XLM-R base with fsdp on a v5p-32:
    14.1 GiB per device instead of 4.4). Inside jit the mesh is set as an abstract mesh
    (`jax.set_mesh` may only be used outside of jit).
    """

    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return traced


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of the leading (example) dim of every batch array, per the rules' `batch` entry."""
    batch_axes = dict(rules).get("batch")
    return NamedSharding(mesh, PartitionSpec(batch_axes))


def batch_shards(mesh: Mesh, rules) -> int:
    """How many ways the batch dim is split: the global batch must be a multiple of this."""
    batch_axes = dict(rules).get("batch") or ()
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else batch_axes
    return int(np.prod([mesh.shape[a] for a in batch_axes]))


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, auto: bool = False) -> None:
    """Joins a multi-process run: explicit coordinator flags, or cluster auto-detection.

    CPU processes talk over gloo; TPU pods, SLURM and other clusters that jax knows
    fill in the arguments themselves when `auto` is set.
    """
    if coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif auto:
        jax.distributed.initialize()
