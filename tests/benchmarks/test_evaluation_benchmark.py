"""The evaluation benchmark encodes real Tatoeba sentences with ours and both peers, checks
that every system computed the same vectors, times retrieval and the fine-tuning step, and
ends in its ratio line; a bad flag ends in one error line."""
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LANGUAGES, PAIRS = ("deu", "fra"), 20
TINY = ["--layers=1", "--hidden=32", "--heads=2", "--ffn=64", f"--pairs={PAIRS}",
        f"--languages={','.join(LANGUAGES)}", "--repeats=1", "--steps=1", "--batch=4", "--seq=16"]
NUMBER = r"[\d,]+"
SYSTEM_LINE = re.compile(rf"(?P<name>\w+): (?P<sentences>{NUMBER}) sentences/s  (?P<tokens>{NUMBER}) tokens/s best, "
                         rf"{NUMBER} sentences/s median  CPU [\d.]+ s/call  \(first call [\d.]+s"
                         r"(, (?P<compiled>\d+) compiled shapes)?\)")
RATIO_LINE = re.compile(r"ratio_vs_naive_xlm_jax=(\S+) ratio_vs_hf_torch=(\S+) ratio_finetune_vs_pretrain=(\S+)")


def run_benchmark(*args, blocked=(), tmp_path=None) -> subprocess.CompletedProcess:
    """`python -m xlm_jax.benchmarks.evaluation args` on one fast-compiling device; `blocked`
    packages are made uninstalled (a sitecustomize puts None in sys.modules)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    if blocked:
        (tmp_path / "sitecustomize.py").write_text(
            "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked))
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "xlm_jax.benchmarks.evaluation", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def to_int(text: str) -> int:
    return int(text.replace(",", ""))


def test_peers_agree_with_ours_and_every_number_is_printed(shared_data):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    result = run_benchmark(*TINY, f"--data={shared_data / 'tatoeba'}")
    assert result.returncode == 0, result.stderr[-3000:]
    out, lines = result.stdout, result.stdout.strip().splitlines()

    # The sentences are both sides of the first PAIRS lines; byte tokens are UTF-8 bytes + <s> + </s>.
    sides = [(shared_data / "tatoeba" / f"tatoeba.{lang}-eng.{side}").read_text(encoding="utf-8").splitlines()[:PAIRS]
             for lang in LANGUAGES for side in (lang, "eng")]
    lengths = [[len(text.encode("utf-8")) + 2 for text in side] for side in sides]
    counted = re.search(rf"sentences: ({NUMBER}) .*?, ({NUMBER}) tokens .* layer 1 of 1", out)
    assert counted and to_int(counted[1]) == 2 * PAIRS * len(LANGUAGES), out
    assert to_int(counted[2]) == sum(map(sum, lengths)), out

    systems = {m["name"]: m for m in map(SYSTEM_LINE.fullmatch, lines) if m}
    assert set(systems) == {"xlm_jax", "naive_xlm_jax", "hf_torch"}, out
    for m in systems.values():
        assert to_int(m["sentences"]) > 0 and to_int(m["tokens"]) > to_int(m["sentences"]), m.group(0)
    # The naive encoder pads each side to its longest sentence: one program per distinct longest length.
    assert int(systems["naive_xlm_jax"]["compiled"]) == len({max(side) for side in lengths}), out
    assert int(systems["xlm_jax"]["compiled"]) >= 1 and systems["hf_torch"]["compiled"] is None, out

    agreement = re.search(r"agreement with xlm_jax: naive_xlm_jax max \|diff\| (\S+), hf_torch max \|diff\| (\S+) "
                          r"\(tolerance 1e-04\)", out)
    assert agreement and all(float(d) <= 1e-4 for d in agreement.groups()), out
    retrieval = re.search(rf"retrieval: 2 languages x {PAIRS} pairs in ([\d.]+)s wall .*mean acc ([\d.]+)", out)
    assert retrieval and float(retrieval[1]) > 0 and 0 <= float(retrieval[2]) <= 1, out
    for step in (r"fine-tuning step \(SequenceClassifier, 3 labels\)",
                 r"pretraining step \(MLM, same architecture, random weights\)"):
        assert re.search(rf"{step}: {NUMBER} tokens/s  batch 4 x seq 16 ", out), out
    assert re.search(r"devices: 1 x cpu, \d+ CPU cores, load average [\d.]+ at the start", out), out
    assert re.search(r"peak memory [\d.]+ GiB", out), out
    ratios = RATIO_LINE.fullmatch(lines[-1])
    assert ratios, out
    assert all(math.isfinite(float(r)) and float(r) > 0 for r in ratios.groups()), out


@pytest.mark.parametrize("flags, fragment, blocked", [
    (["--languages=deu,xyz", "--compare=naive_xlm_jax"], "--languages: no Tatoeba files for xyz in", ()),
    (["--data={missing}", "--compare=naive_xlm_jax"], "--data={missing}: no such directory", ()),
    (["--compare=naive_xlm_jax,hf_flax"], "--compare: unknown peer 'hf_flax'", ()),
    ([], "--compare=hf_torch needs the `torch` package", ("torch",)),
])
def test_a_bad_flag_is_one_error_line_before_anything_runs(shared_data, tmp_path, flags, fragment, blocked):
    missing = tmp_path / "no_tatoeba"
    flags, fragment = [f.format(missing=missing) for f in flags], fragment.format(missing=missing)
    result = run_benchmark(f"--data={shared_data / 'tatoeba'}", *TINY, *flags, blocked=blocked, tmp_path=tmp_path)
    assert_one_error_line(result, fragment)
    assert not result.stdout, result.stdout


def test_vectors_that_disagree_stop_it_before_any_speed_is_printed(shared_data):
    # No two float32 computations padded differently agree to 0, so tolerance 0 must fail.
    result = run_benchmark(f"--data={shared_data / 'tatoeba'}", *TINY, "--tolerance=0", "--compare=naive_xlm_jax")
    assert_one_error_line(result, "sentence vectors differ from ours (naive_xlm_jax: max |diff|")
    assert "sentences/s" not in result.stdout, result.stdout


def assert_one_error_line(result, fragment: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("xlm_jax: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in errors[0], errors[0]
