"""The train-step benchmark on a mix of objectives: one line for the mix and one per objective
alone, tokens/s and MFU each, and the mix's model FLOPs by part (XLCo's key encoder apart)."""
import os
import pathlib
import re
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--layers=2", "--hidden=32", "--heads=2", "--ffn=64", "--vocab=100", "--seq=16",
        "--batch=4", "--steps=1", "--repeats=1", "--queue_size=64"]
LINE = re.compile(r"(?P<name>xlm_jax(?: \w+ alone)?): [\d.]+ steps/s  (?P<tokens>[\d,]+) tokens/s  MFU [\d.]+%")


def _benchmark(*flags):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    return subprocess.run([sys.executable, "-m", "xlm_jax.benchmarks.train_step", *TINY, *flags],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_mix_prints_itself_each_objective_alone_and_the_flops_by_part():
    result = _benchmark("--objectives=mlm,tlm,xlco,adversarial,pair_classification")
    assert result.returncode == 0, result.stderr[-3000:]
    systems = {m["name"]: m for m in map(LINE.match, result.stdout.splitlines()) if m}
    # adversarial reads MLM's batch: it trains in "mlm alone", not on a batch of its own
    assert sorted(systems) == ["xlm_jax", "xlm_jax mlm alone", "xlm_jax pair_classification alone",
                               "xlm_jax tlm alone", "xlm_jax xlco alone"], result.stdout
    flops = re.search(r"model GFLOP per step: (.*)", result.stdout).group(1)
    for part in ("mlm", "tlm", "xlco", "xlco key encoder (forward only)", "adversarial", "pair_classification"):
        assert re.search(rf"(^|, ){re.escape(part)} [\d.]+", flops), (part, flops)


def test_peers_train_masked_lm_alone_so_a_mix_is_not_compared_with_them():
    result = _benchmark("--objectives=mlm,tlm", "--compare=hf_torch")
    assert result.returncode == 2
    assert "--compare: the peers train masked LM alone; compare with --objectives=mlm" in result.stderr
