"""Runs that mix every objective, end to end through `python -m xlm_jax.main`: exact resume after
kill -9 (XLCo's queue and momentum encoder included), two processes == one, per-objective logs,
the alternate schedule, and evaluation / export of a run whose state holds objective heads.

The corpus is real text from ../shared/data: monolingual en, el, sw, cy and 300 en-sw pairs
(TICO-19), so MLM, TLM, XLCo, the language discriminator and pair classification all train.
"""
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from tests.helpers import write_corpus
from tests.train.test_loop import REPO_ROOT, command, environment, kill_after_step_5, rows, run

LANGUAGES = ("en", "el", "sw", "cy")
ALL_OBJECTIVES = ("mlm", "tlm", "xlco", "adversarial", "pair_classification")
MIX = [f"--config.objectives.{name}=1" for name in ALL_OBJECTIVES] + [
    "--config.data.shards=4", "--config.mlm.batch_size=8", "--config.tlm.batch_size=4",
    "--config.xlco.batch_size=4", "--config.pair_classification.batch_size=4", "--config.xlco.queue_size=24",
    "--config.xlco.momentum=0.9", "--config.tlm.positions=reset", "--config.model.num_languages=4"]


@pytest.fixture(scope="module")
def pair_corpus(shared_data, tmp_path_factory) -> pathlib.Path:
    return write_corpus(tmp_path_factory.mktemp("pair_corpus"), shared_data, LANGUAGES, 300,
                        pairs={"en-sw": "tico19"})


def mixed(workdir, corpus, *extra):
    return command(workdir, corpus, *MIX, *extra)


@pytest.fixture(scope="module")
def uninterrupted_mix(pair_corpus, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mix")
    result = run(workdir, pair_corpus, *MIX)
    return workdir, result.stdout, rows(workdir)


def test_every_objective_is_logged_under_its_name(uninterrupted_mix):
    workdir, stdout, by_step = uninterrupted_mix
    assert sorted(by_step) == list(range(1, 9))
    for name in ALL_OBJECTIVES:
        assert all(f"{name}/loss" in row for row in by_step.values()), name
        assert f"  {name} " in stdout.split("step 8/8")[1].splitlines()[0]   # the log line shows each
    last = by_step[8]
    total = sum(last[f"{name}/loss"] for name in ALL_OBJECTIVES)
    assert last["loss"] == pytest.approx(total, rel=1e-5)
    assert 0 <= last["adversarial/lambda"] <= 1 and last["mlm/masked_tokens"] > 0
    assert "en-sw" in stdout and "translation pairs" in stdout     # the pair sampling table
    assert "xlco key encoder (forward only)" in stdout              # its FLOPs on their own line
    events = list((workdir / "tensorboard").glob("events.*"))
    assert events and b"train/xlco/loss" in events[0].read_bytes()


def test_resume_after_kill_reproduces_every_objective_exactly(pair_corpus, uninterrupted_mix, tmp_path):
    """XLCo's loss at a step depends on the queue of the steps before it, and on the momentum
    encoder: after a kill -9 and a resume from step 3 every objective's loss is the same bits."""
    _, _, expected = uninterrupted_mix
    workdir = tmp_path / "killed"
    kill_after_step_5(workdir, mixed(workdir, pair_corpus))
    resumed = run(workdir, pair_corpus, *MIX)
    assert "/checkpoints/3" in resumed.stdout
    again = rows(workdir)
    keys = ["loss"] + [f"{name}/loss" for name in ALL_OBJECTIVES] + ["xlco/accuracy"]
    assert {s: [again[s][k] for k in keys] for s in again} == {s: [expected[s][k] for k in keys] for s in expected}


def test_two_processes_match_one_process_for_the_mix(pair_corpus, uninterrupted_mix, tmp_path):
    """Two processes on 127.0.0.1 (gloo), one CPU device each, fsdp == one process on one device."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi = tmp_path / "multi"
    processes = [subprocess.Popen(
        mixed(multi, pair_corpus, "--config.mesh.rules=fsdp", f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2", f"--process_id={i}"),
        cwd=REPO_ROOT, env=environment(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    one, two = uninterrupted_mix[2], rows(multi)
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        for name in ALL_OBJECTIVES:
            assert two[step][f"{name}/loss"] == pytest.approx(one[step][f"{name}/loss"], rel=1e-5, abs=1e-6)


def test_alternate_schedule_trains_one_batch_per_update_and_exports(pair_corpus, tmp_path):
    workdir = tmp_path / "alternate"
    run(workdir, pair_corpus, "--config.objectives.tlm=1", "--config.objective_schedule=alternate",
        "--config.data.shards=4", "--config.tlm.batch_size=4")
    for step, row in rows(workdir).items():
        trained = sorted(k.split("/")[0] for k in row if k.endswith("/loss"))
        assert trained == (["mlm"] if step % 2 else ["tlm"]), (step, trained)   # steps 1, 3, ... are MLM's
    export = tmp_path / "hf"
    result = subprocess.run([*command(workdir, pair_corpus)[:3], "--mode=export_hf", f"--workdir={workdir}",
                             f"--export_dir={export}"], cwd=REPO_ROOT, env=environment(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (export / "model.safetensors").exists()


def test_a_mixed_run_is_evaluated_and_loaded_without_its_objective_state(pair_corpus, uninterrupted_mix, tmp_path):
    """Readers of a run take the model's params and leave the objectives' heads and state (the
    discriminator, the pair classifier, XLCo's queue and key encoder) in the checkpoint."""
    source, _, _ = uninterrupted_mix
    workdir = tmp_path / "copy"
    shutil.copytree(source, workdir)
    result = subprocess.run(
        [*command(workdir, pair_corpus)[:3], f"--workdir={workdir}", "--mode=evaluate", "--evals=mlm"],
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workdir / "eval" / "8" / "results.json").exists()
    notebook = ("import xlm_jax; model = xlm_jax.load(%r); "
                "print('shape', model.encode(['Habari ya asubuhi', 'Good morning']).shape)" % str(workdir))
    result = subprocess.run([sys.executable, "-c", notebook], cwd=REPO_ROOT, env=environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shape (2, 32)" in result.stdout
