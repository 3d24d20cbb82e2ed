"""`--mode=plan`: the train step compiled for a target that need not be here, and its cost there.

The target's compile-only devices need no distributed setup and no backend but the CPU;
what is compiled and reported is xlm_jax/plan/plan.py's.
"""
import os

import jax

from xlm_jax.plan.plan import Plan, format_plan, local_target, plan_target
from xlm_jax.plan.targets import parse_target


def main(config, workdir: str, flags) -> None:
    del flags
    if config.plan.target:
        jax.config.update("jax_platforms", "cpu")
    run_plan(config, workdir)


def run_plan(config, workdir: str, log=print) -> Plan:
    """--mode=plan: plans `config.plan.target` (default: this machine's devices, as a CPU check)
    and writes <workdir>/plan-<target>.json."""
    target = parse_target(config.plan.target) if config.plan.target else local_target()
    plan = plan_target(config, target)
    log(format_plan(plan))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"plan-{target.name}.json")
    with open(path, "w") as f:
        f.write(plan.to_json())
    log(f"wrote {path}")
    return plan
