"""The README's table of plans: XLM-R base and large on TPU slices and GPU hosts, per layout.

  python -m xlm_jax.plan.table --out=docs/plans.md [--configs=... --targets=... --layouts=...]

Every cell is `--mode=plan` on the recipe at its own batch (8192 sequences of 512 tokens)
with the layout's mesh and rules, in a process of its own. Where the recipe's
microbatching does not fit, the plan is redone once at the gradient accumulation its
advice names. Rows are printed (and each plan appended to <out>.jsonl beside the
Markdown, which a rerun picks up where it stopped) as they finish: a cell compiles in a
minute or two on a CPU.
"""
import json
import os
import subprocess
import sys
import tempfile

from absl import flags

from xlm_jax import cli
from xlm_jax.plan.targets import GiB

flags.DEFINE_list("configs", ["xlmr_base", "xlmr_large"], "Recipes in configs/.")
flags.DEFINE_list("targets", ["v4-32", "v5p-64", "v5e-64", "v6e-64", "8xH100"], "Targets (see plan/targets.py).")
flags.DEFINE_list("layouts", ["dp", "fsdp", "fsdp_tp"], "Mesh layouts.")
flags.DEFINE_integer("tensor", 2, "The tensor axis of fsdp_tp.")
flags.DEFINE_string("out", "", "Markdown file to write (and <out>.jsonl with every plan).")
FLAGS = flags.FLAGS

CONFIGS_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs"))


LAYOUTS = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tp": (1, -1, None)}   # None: --tensor


def plan_cell(recipe: str, layout: str, target: str, workdir: str, grad_accum_steps: int | None = None) -> dict:
    """--mode=plan of one cell, in its own process: a compiler that crashes is a finding (the
    cell says so), not the end of the table. dp replicates the state, fsdp shards it, fsdp_tp
    also splits heads, MLP and vocabulary --tensor ways."""
    data, fsdp, tensor = LAYOUTS[layout]
    command = [sys.executable, "-m", "xlm_jax.main", "--mode=plan", f"--config={CONFIGS_DIR}/{recipe}.py",
               f"--workdir={workdir}", f"--config.plan.target={target}", f"--config.mesh.rules={layout}",
               f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}",
               f"--config.mesh.tensor={tensor or FLAGS.tensor}"]
    if grad_accum_steps:
        command.append(f"--config.train.grad_accum_steps={grad_accum_steps}")
    result = subprocess.run(command, capture_output=True, text=True)
    path = os.path.join(workdir, f"plan-{target}.json")
    if result.returncode < 0:
        raise RuntimeError(f"the compiler crashed (signal {-result.returncode})")
    if result.returncode or not os.path.exists(path):
        errors = [line for line in result.stderr.splitlines() if "Error" in line]
        raise RuntimeError(f"the plan failed: {errors[-1][:160] if errors else f'exit {result.returncode}'}")
    with open(path) as f:
        plan = json.load(f)
    os.remove(path)
    return plan


def plan_with_accumulation(recipe: str, layout: str, target: str, workdir: str) -> dict:
    """The recipe's plan; where it does not fit, redone once at the accumulation its advice names."""
    plan = plan_cell(recipe, layout, target, workdir)
    accum = None if plan["fits"] else accumulation_from_advice(plan["advice"])
    if accum and accum != plan["grad_accum_steps"]:
        plan = plan_cell(recipe, layout, target, workdir, accum)
    return plan


def accumulation_from_advice(advice: list[str]) -> int | None:
    for tip in advice:
        if tip.startswith("--config.train.grad_accum_steps="):
            return int(tip.split("=")[1].split()[0])
    return None


def row(recipe: str, layout: str, plan: dict) -> str:
    mem, roof = plan["memory"], plan["roofline"]
    fits = "yes" if plan["fits"] else f"no (+{(mem['peak'] - mem['capacity']) / GiB:.1f} GiB)"
    return (f"| {recipe} | {plan['target']} | {layout} | {plan['grad_accum_steps']} | {fits} | "
            f"{mem['peak'] / GiB:.1f} / {mem['capacity'] / GiB:.0f} | {100 * roof['mfu_ceiling']:.0f}% "
            f"({roof['bound_by']}) | {roof['tokens_per_s'] / 1e3:,.0f}k | "
            f"{plan['compile_seconds']['compile']:.0f} s |")


HEADER = ("| config | target | layout | accum | fits? | peak / HBM GiB per device | MFU ceiling (bound) "
          "| tokens/s ceiling | compile |\n|---|---|---|---:|---|---:|---:|---:|---:|")


def main(argv):
    del argv
    done = {}   # cells of an earlier, interrupted table: <out>.jsonl
    if FLAGS.out and os.path.exists(FLAGS.out + ".jsonl"):
        with open(FLAGS.out + ".jsonl") as f:
            for line in f:
                cell = json.loads(line)
                done[cell["config"], cell["layout"], cell["target"]] = cell
    lines = [HEADER]
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for layout in FLAGS.layouts:          # one layout for every config and target first
            for recipe in FLAGS.configs:
                for target in FLAGS.targets:
                    cell = done.get((recipe, layout, target))
                    if cell is None:
                        try:
                            cell = {"plan": plan_with_accumulation(recipe, layout, target, workdir)}
                        except RuntimeError as error:
                            cell = {"error": str(error)}
                        cell.update(config=recipe, layout=layout, target=target)
                        if FLAGS.out:
                            with open(FLAGS.out + ".jsonl", "a") as f:
                                f.write(json.dumps(cell) + "\n")
                    line = (row(recipe, layout, cell["plan"]) if "plan" in cell else
                            f"| {recipe} | {target} | {layout} | | {cell['error']} | | | | |")
                    print(line, flush=True)
                    lines.append(line)
                    if FLAGS.out:
                        with open(FLAGS.out, "w") as f:
                            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.run(main)
