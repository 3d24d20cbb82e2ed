"""`--mode=plan`: the config's real train step compiled for a target, and what it will cost there.

The step is the one training runs (train/aot.py: same model, optimizer, rules, remat,
microbatching, every objective at its own batch), lowered from abstract inputs on the
target's compile-only devices and compiled by the target's own compiler. From the
executable: memory per device against the chip's HBM, with a verdict and what to change;
the program's FLOP count beside our formula's; the collectives of one step; and a
roofline: the step time the chip's peak FLOP/s, HBM bandwidth and interconnect allow
(the slowest of the three, as if they overlapped perfectly), the tokens/s and the MFU
ceiling that implies. A roofline bounds speed from above; measured MFU is lower.

FLOPs: XLA's cost analysis counts a loop body once, and the step has loops (the
microbatches, the scanned layers, on TPU the windowed-einsum loops of fsdp matmuls), so
its count is not used: the program's matmul FLOPs are counted in the lowered program
instead, with each loop body counted as often as it runs (`hlo.matmul_flops`), beside the formula.
"""
import dataclasses
import json
import math
import re
import time

import jax

from xlm_jax.models import flops as flops_lib
from xlm_jax.objectives.registry import build_objectives
from xlm_jax.parallel.mesh import mesh_shape
from xlm_jax.plan.hlo import collectives_per_step, matmul_flops
from xlm_jax.plan.memory import advice, device_capacity
from xlm_jax.plan.targets import Chip, GiB, Target
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train.aot import train_step_inputs
from xlm_jax.train.builder import validate


@dataclasses.dataclass
class Plan:
    """Everything the plan reports, JSON-ready (bytes, FLOPs and seconds as plain numbers)."""
    target: str
    chip: str
    devices: int
    mesh: dict
    rules: str
    batch: dict
    grad_accum_steps: int
    memory: dict           # per device: arguments, outputs, aliased, temporaries, peak, capacity
    fits: bool
    advice: list
    flops: dict            # per step: the formula's model FLOPs, the program's matmul FLOPs
    collectives: dict | None   # kind -> {"count", "gib"} per step, per device; None: not compiled
    roofline: dict
    compile_seconds: dict

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def plan_target(config, target: Target) -> Plan:
    """Compiles `config`'s train step for `target` and reports it (see the module docstring)."""
    validate(config)
    t = config.train
    with target.compiling():
        devices = target.devices()
        start = time.perf_counter()
        step, state, batches = train_step_inputs(config, devices)
        lowered = step.lower(state, batches)
        lowered_s = time.perf_counter() - start
        arguments = _sharded_bytes((state, batches))
        try:
            compiled = lowered.compile()
            memory = _memory(compiled.memory_analysis(), target.chip.hbm_bytes)
            collectives = collectives_per_step(compiled.as_text() or "")
        except jax.errors.JaxRuntimeError as error:   # TPU's compiler refuses what cannot fit
            memory = _exhausted(error, arguments, target.chip.hbm_bytes)
            collectives = None
        compiled_s = time.perf_counter() - start - lowered_s
    objectives = build_objectives(config)
    flops = _flops(objectives, lowered)
    target_mesh = dict(zip(("data", "fsdp", "tensor"), mesh_shape(config.mesh, len(devices))))
    roofline = _roofline(config, objectives, target, target_mesh, flops, collectives, memory)
    fits = memory["peak"] <= memory["capacity"]
    return Plan(
        target=target.name, chip=target.chip.name, devices=len(devices), mesh=target_mesh,
        rules=config.mesh.rules, batch={o.name: o.batch_size for o in objectives},
        grad_accum_steps=t.grad_accum_steps, memory=memory, fits=fits,
        advice=[] if fits else advice(config, memory, len(devices)), flops=flops,
        collectives=None if collectives is None else
        {kind: {"count": c.count, "gib": c.bytes / GiB} for kind, c in sorted(collectives.items())},
        roofline=roofline, compile_seconds={"lower": round(lowered_s, 1), "compile": round(compiled_s, 1)})


def _sharded_bytes(tree) -> int:
    """Per-device bytes of abstract arrays with shardings (the most any device holds)."""
    return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


_EXHAUSTED = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\)")


def _exhausted(error, arguments: int, capacity: float) -> dict:
    """The memory the compiler said it needed when it refused to compile (TPU: out of HBM)."""
    found = _EXHAUSTED.search(str(error))
    if "RESOURCE_EXHAUSTED" not in str(error) or not found:
        raise error
    temporaries = float(found.group(1)) * 1024 ** "KMGT".index(found.group(2)) * 1024
    return {"arguments": arguments, "outputs": None, "aliased": None, "temporaries": temporaries, "code": None,
            "peak": arguments + temporaries, "capacity": capacity,
            "note": "the compiler ran out of memory and reported only its temporaries"}


def _memory(analysis, capacity: float) -> dict:
    """Per-device bytes of the executable: the state and batch it reads (arguments), what it
    writes (outputs; the donated state's outputs alias its inputs), and its temporaries."""
    peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes + analysis.generated_code_size_in_bytes)
    return {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
            "aliased": analysis.alias_size_in_bytes, "temporaries": analysis.temp_size_in_bytes,
            "code": analysis.generated_code_size_in_bytes, "peak": peak, "capacity": capacity}


def _flops(objectives, lowered) -> dict:
    """Model FLOPs per step by the formula (models/flops.py) beside the program's own count."""
    model_flops = sum(sum(o.flops().values()) for o in objectives)
    return {"model_per_step": model_flops, "program_per_step": matmul_flops(lowered.as_text())}


# Bytes each device sends per byte of a collective's result, on a ring of n devices (n large).
_RING_FACTOR = {"all-gather": 1.0, "reduce-scatter": 1.0, "all-reduce": 2.0, "all-to-all": 1.0,
                "collective-permute": 1.0}


def _roofline(config, objectives, target: Target, target_mesh: dict, flops: dict, collectives: dict,
              memory: dict) -> dict:
    """Seconds per step each resource needs at its peak; the step takes at least the largest.

    Compute: the program's matmul FLOPs (the formula's where not counted). HBM, counted low:
    every microbatch reads the layer weights three times (forward, the backward's two
    matmuls) and writes and reads its temporaries once, and the update reads and writes the
    state once. Interconnect: the collectives' bytes, each device sending what a ring
    algorithm sends."""
    chip, n = target.chip, target.num_devices
    work = flops.get("program_per_step") or flops["model_per_step"]
    compute_s = work / (n * chip.peak_flops)
    width = {"float32": 4, "bfloat16": 2}[config.model.dtype]
    weights = flops_lib.body_params(config.model) * width / target_mesh["tensor"]
    traffic = (config.train.grad_accum_steps * (3 * weights + 2 * memory["temporaries"])
               + 2 * memory["arguments"])
    hbm_s = traffic / chip.hbm_bandwidth if chip.hbm_bandwidth else None
    # reduce-scatter results are the shard: a device sends (n-1) shards of that size.
    sent = sum(c.bytes * _RING_FACTOR[kind] * (n - 1 if kind == "reduce-scatter" else 1)
               for kind, c in (collectives or {}).items())
    comm_s = sent / target.collective_bandwidth if target.collective_bandwidth and collectives is not None else None
    step_s = max(compute_s, hbm_s or 0.0, comm_s or 0.0)
    tokens = sum(o.tokens_per_step() for o in objectives)
    bound = max((("compute", compute_s), ("HBM", hbm_s or 0.0), ("interconnect", comm_s or 0.0)),
                key=lambda x: x[1])[0]
    return {"compute_s": compute_s, "hbm_s": hbm_s, "interconnect_s": comm_s, "step_s": step_s,
            "bound_by": bound, "tokens_per_s": tokens / step_s,
            "mfu_ceiling": flops["model_per_step"] / (step_s * n * chip.peak_flops)}


def format_plan(plan: Plan) -> str:
    """The plan as a user reads it before renting the target."""
    mem, fl, roof = plan.memory, plan.flops, plan.roofline
    gib = lambda b: f"{b / GiB:.1f} GiB"   # noqa: E731
    verdict = (f"fits: peak {gib(mem['peak'])} of {gib(mem['capacity'])} per device"
               if plan.fits else
               f"does not fit by {gib(mem['peak'] - mem['capacity'])}: peak {gib(mem['peak'])} of "
               f"{gib(mem['capacity'])} per device; try " + "; or ".join(plan.advice))
    lines = [
        f"plan: {plan.target} = {plan.devices} x {plan.chip}; mesh {plan.mesh}, rules {plan.rules!r}; batch "
        + ", ".join(f"{name} {size}" for name, size in plan.batch.items())
        + f" in {plan.grad_accum_steps} microbatch(es)",
        f"memory per device: arguments {gib(mem['arguments'])} (state and batch), temporaries "
        f"{gib(mem['temporaries'])}, "
        + (f"outputs {gib(mem['outputs'])} ({gib(mem['aliased'])} of them reuse the donated state), "
           if mem["outputs"] is not None else f"({mem.get('note')}), ")
        + f"peak {gib(mem['peak'])}",
        verdict,
        f"model FLOPs per step (formula): {_flop(fl['model_per_step'])}",
    ]
    if fl.get("program_per_step"):
        lines.append(f"program FLOPs per step (matmuls as lowered, remat included): "
                     f"{_flop(fl['program_per_step'])}, x{fl['program_per_step'] / fl['model_per_step']:.2f} "
                     f"the formula's")
    if plan.collectives is None:
        lines.append("collectives per step: unknown (not compiled)")
    elif plan.collectives:
        lines.append("collectives per step, per device: " + ", ".join(
            f"{kind} x{c['count']} ({c['gib']:.2f} GiB)" for kind, c in plan.collectives.items()))
    else:
        lines.append("collectives per step: none")
    ms = lambda s: "n/a" if s is None else f"{s * 1e3:,.1f} ms"   # noqa: E731
    lines.append(f"roofline: compute {ms(roof['compute_s'])}, HBM {ms(roof['hbm_s'])}, interconnect "
                 f"{ms(roof['interconnect_s'])} per step -> at best {roof['step_s']:.3f} s/step "
                 f"({roof['bound_by']}-bound), {roof['tokens_per_s']:,.0f} tokens/s, MFU ceiling "
                 f"{100 * roof['mfu_ceiling']:.0f}%")
    lines.append(f"compile: lowered in {plan.compile_seconds['lower']:.1f} s, compiled in "
                 f"{plan.compile_seconds['compile']:.1f} s")
    return "\n".join(lines)


def _flop(count: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 1e6:,.1f} MFLOP"


def local_target() -> Target:
    """This machine's devices as a target: memory is a device's limit (or the RAM CPU devices share),
    peak FLOP/s the measured or published one; bandwidths are unknown, so the roofline is compute's."""
    peak, _ = metrics_lib.peak_flops()
    chip = Chip(jax.devices()[0].device_kind, jax.default_backend(), device_capacity(jax.local_devices()),
                peak / jax.local_device_count(), hbm_bandwidth=0.0, link_bandwidth=0.0)
    return Target("local", chip, jax.device_count(), jax.process_count(), attached=True)
