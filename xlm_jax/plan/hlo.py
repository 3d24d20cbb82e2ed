"""What a compiled program communicates per step, read from its optimized HLO text.

Each collective (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute;
an async `-start`/`-done` pair counts once) is counted with the number of times it runs:
the product of the trip counts of the while loops around it (the microbatch loop, the
scanned layers, the TPU compiler's windowed-einsum loops), which XLA records as
`known_trip_count`. Bytes are those of the collective's result, per device.
"""
import collections
import dataclasses
import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) ([a-z\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_CALLED = re.compile(r"\b(?:calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass
class Collective:
    count: int = 0         # executions per step
    bytes: float = 0.0     # result bytes per device, summed over executions


def _result_bytes(result_type: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(result_type):
        if dtype in _BYTES:
            total += _BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _parse(hlo_text: str):
    """computation -> ([(collective kind, bytes)], [(called computation, times per run)]), and ENTRY.

    A while loop's trip count is XLA's `known_trip_count` where recorded (GPU), else the one
    integer constant its condition compares the counter with (TPU's scan loops); else 1."""
    computations, constants, entry, current, loops = {}, collections.defaultdict(list), None, None, []
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            computations[current] = ([], [])
            if line.startswith("ENTRY"):
                entry = current
            continue
        if current is None:
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        result_type, op, rest = instruction.groups()
        kind = op.removesuffix("-start")
        if kind in COLLECTIVES and not op.endswith("-done"):
            channel = re.search(r"channel_id=(\d+)", rest)
            identity = channel.group(1) if channel else f"{current}/{len(computations[current][0])}"
            computations[current][0].append((kind, _result_bytes(result_type), identity))
        if op == "constant" and re.fullmatch(r"[su](32|64)\[\]\S*", result_type.strip()):
            constants[current].append(int(re.match(r"-?\d+", rest).group(0)))
        if op == "while":
            known = _TRIP_COUNT.search(rest)
            condition = re.search(r"condition=%?([\w.\-]+)", rest).group(1)
            body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
            loops.append((current, body, int(known.group(1)) if known else None, condition))
            continue
        for called in _CALLED.findall(rest):
            computations[current][1].append((called, 1))
        for branches in _BRANCHES.findall(rest):
            for called in branches.split(","):
                computations[current][1].append((called.strip().lstrip("%"), 1))
    for parent, body, known, condition in loops:
        bounds = constants.get(condition, [])
        trips = known or (bounds[0] if len(bounds) == 1 and bounds[0] > 0 else 1)
        computations[parent][1].append((body, trips))
    return computations, entry


def collectives_per_step(hlo_text: str) -> dict[str, Collective]:
    """{kind: Collective} of one execution of the program (loops unrolled by their trip counts).

    One collective is one channel: the TPU compiler may split a collective into a chain of
    pieces in several fusions that share its channel_id, each showing the whole result
    (seen on v5e), and those count once."""
    computations, entry = _parse(hlo_text)
    runs = {}   # (kind, channel) -> [times it runs per step, result bytes]

    def visit(name: str, times: int, depth: int = 0):
        if name not in computations or depth > 64:
            return
        ops, calls = computations[name]
        for kind, size, channel in ops:
            seen = runs.setdefault((kind, channel), [0, 0])
            seen[0], seen[1] = max(seen[0], times), max(seen[1], size)
        for called, trips in calls:
            visit(called, times * trips, depth + 1)

    if entry is not None:
        visit(entry, 1)
    totals = collections.defaultdict(Collective)
    for (kind, _), (times, size) in runs.items():
        totals[kind].count += times
        totals[kind].bytes += times * size
    return dict(totals)


_FUNCTION = re.compile(r"^\s*func\.func (?:public |private )?@([\w.\-$]+)\(")
_DOT_GENERAL = re.compile(r"stablehlo\.dot_general .*contracting_dims = \[([\d, ]*)\] x \[[\d, ]*\].*"
                          r": \(tensor<([\dx]*)x?[a-z]+\d*>, tensor<[^>]*>\) -> tensor<([\dx]*)x?[a-z]+\d*>")
_CALL = re.compile(r"\bcall @([\w.\-$]+)")
_BOUND = re.compile(r"stablehlo\.constant dense<(\d+)> : tensor<i(?:32|64)>")


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split("x") if d]


def matmul_flops(stablehlo_text: str) -> float:
    """2 x multiply-adds of every dot_general of a lowered (not yet optimized) program: global
    shapes, before partitioning; a `stablehlo.while` body counted as often as it runs (the
    bound its `cond` region compares the counter with: jax's scan and fori_loop count from 0),
    and every function as often as it is called from there."""
    own, calls = collections.defaultdict(float), collections.defaultdict(list)
    current, depth, loops, in_cond, bound = None, 0, [], False, 1
    for line in stablehlo_text.splitlines():
        function = _FUNCTION.match(line)
        if function:
            current, depth, loops = function.group(1), 0, []
        times = math.prod(trips for trips, _ in loops)
        stripped = line.strip()
        if stripped == "cond {":
            in_cond, bound = True, 1
        elif in_cond and _BOUND.search(line):
            bound = int(_BOUND.search(line).group(1))
        elif stripped == "} do {":
            in_cond = False
            loops.append((bound, depth))   # the body ends where the depth falls below this line's
        dot = _DOT_GENERAL.search(line)
        if dot and current:
            contracting, lhs, result = dot.groups()
            lhs_dims = _dims(lhs)
            reduced = math.prod(lhs_dims[int(i)] for i in contracting.split(",") if i.strip())
            own[current] += times * 2.0 * math.prod(_dims(result)) * reduced
        for callee in _CALL.findall(line):
            calls[current].append((callee, times))
        depth += line.count("{") - line.count("}")
        while loops and depth < loops[-1][1]:
            loops.pop()

    def total(name: str, level: int = 0) -> float:
        if level > 64:
            return 0.0
        return own[name] + sum(times * total(callee, level + 1) for callee, times in calls[name])

    return total("main")
