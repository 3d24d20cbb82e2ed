"""The train-step benchmark's peer comparison runs, prints each system's speed and CPU, and
ends in its documented ratio line."""
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--layers=1", "--hidden=32", "--heads=2", "--ffn=64", "--vocab=100", "--seq=16",
        "--batch=2", "--steps=1", "--repeats=1"]
SYSTEM_LINE = re.compile(r"(?P<name>\w+): [\d,]+ tokens/s best, [\d,]+ median  "
                         r"CPU (?P<cpu>[\d.]+) s/step \((?P<system>[\d.]+) system\)")
RATIO_LINE = re.compile(r"ratio_vs_hf_flax=(\S+) ratio_vs_hf_torch=(\S+)")


def test_compare_prints_each_system_and_ends_with_the_ratios():
    env = dict(os.environ)
    # One device (the batch of 2 splits over none); fast compiles, as in the other tests.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.benchmarks.train_step", *TINY, "--compare=hf_flax,hf_torch"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    for name in ("xlm_jax", "hf_flax", "hf_torch"):
        found = [m for m in (SYSTEM_LINE.match(line) for line in lines) if m and m["name"] == name]
        assert found, result.stdout
        cpu, system = float(found[0]["cpu"]), float(found[0]["system"])
        assert 0 <= system <= cpu + 0.01, found[0].group(0)   # os.times ticks are 10 ms
    match = RATIO_LINE.fullmatch(lines[-1])
    assert match, result.stdout
    for ratio in map(float, match.groups()):
        assert math.isfinite(ratio) and ratio > 0
