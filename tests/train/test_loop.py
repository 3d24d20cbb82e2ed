"""The training loop end to end: exact resume after a kill, SIGTERM, multi-process, errors.

These run `python -m xlm_jax.main` in subprocesses, as a user or a cluster does, on a
tiny model and a corpus of real text from ../shared/data.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import write_corpus

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LANGUAGES = ("en", "el", "sw", "cy")

TINY = [
    "--config.model.num_layers=2", "--config.model.hidden_size=32", "--config.model.num_heads=2",
    "--config.model.mlp_dim=64", "--config.model.vocab_size=702", "--config.model.max_len=64",
    "--config.data.seq_len=32", "--config.data.tokenizer_sentences=4000",
    "--config.data.eval_sentences_per_language=20", "--config.data.eval_batches=1",
    "--config.train.batch_size=8", "--config.train.num_steps=8", "--config.train.warmup_steps=2",
    "--config.train.log_every=1", "--config.evals.mlm.every_steps=4", "--config.checkpoint.every_steps=3",
]


@pytest.fixture(scope="module")
def corpus_dir(shared_data, tmp_path_factory) -> pathlib.Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), shared_data, LANGUAGES, 300)


def command(workdir, corpus_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
            f"--config.data.corpus_dir={corpus_dir}", *TINY, *extra]


def environment(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return env


def run(workdir, corpus_dir, *extra, devices: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run(command(workdir, corpus_dir, *extra), cwd=REPO_ROOT, env=environment(devices),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def rows(workdir) -> dict[int, dict]:
    """metrics.jsonl's training rows by step; a re-run step keeps its last row."""
    by_step = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            by_step[row["step"]] = row
    return by_step


def losses(workdir) -> dict[int, float]:
    """Per-step training loss from metrics.jsonl; a re-run step keeps its last value."""
    return {step: row["loss"] for step, row in rows(workdir).items()}


def wait_for(predicate, process, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def uninterrupted_run(corpus_dir, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run(workdir, corpus_dir)
    return workdir


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run) -> dict[int, float]:
    result = losses(uninterrupted_run)
    assert sorted(result) == list(range(1, 9))
    assert result[8] < result[1]
    return result


def kill_after_step_5(workdir, arguments) -> None:
    """Runs `arguments` and kills it hard once step 3's checkpoint is finalized and step 5 has run past it."""
    process = subprocess.Popen(arguments, cwd=REPO_ROOT, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (workdir / "checkpoints" / "3").is_dir() and (workdir / "metrics.jsonl").exists()
             and max(losses(workdir), default=0) >= 5, process)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_resume_after_kill_reproduces_uninterrupted_losses(corpus_dir, uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    kill_after_step_5(workdir, command(workdir, corpus_dir))
    resumed = run(workdir, corpus_dir)
    assert "resumed from" in resumed.stdout and "/checkpoints/3" in resumed.stdout
    assert losses(workdir) == uninterrupted  # bit-exact on CPU
    # The killed run's rows of steps 4 and 5, redone by the resumed one, are gone: one row per step.
    assert "metrics.jsonl: dropped" in resumed.stdout
    with open(workdir / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert [row["step"] for row in logged if "loss" in row] == list(range(1, 9))


def test_sigterm_saves_exits_zero_and_resumes_exactly(corpus_dir, uninterrupted, tmp_path):
    workdir = tmp_path / "preempted"
    process = subprocess.Popen(command(workdir, corpus_dir), cwd=REPO_ROOT, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (workdir / "metrics.jsonl").exists() and max(losses(workdir), default=0) >= 4,
             process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "SIGTERM: saved step" in output
    saved = int(output.split("SIGTERM: saved step ")[1].split()[0])
    assert 4 <= saved < 8 and (workdir / "checkpoints" / str(saved)).is_dir()
    run(workdir, corpus_dir)
    assert losses(workdir) == uninterrupted


def run_two_processes(workdir, corpus_dir, port: int) -> list[str]:
    """The run as two processes on 127.0.0.1 (gloo), one CPU device each; their outputs."""
    processes = [
        subprocess.Popen(
            command(workdir, corpus_dir, "--config.mesh.rules=fsdp", f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2", f"--process_id={i}"),
            cwd=REPO_ROOT, env=environment(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out
    return outputs


def test_two_processes_match_one_process(corpus_dir, tmp_path):
    """Two processes on 127.0.0.1 (gloo), one CPU device each == one process with two devices."""
    single = tmp_path / "single"
    run(single, corpus_dir, "--config.mesh.rules=fsdp", devices=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi = tmp_path / "multi"
    outputs = run_two_processes(multi, corpus_dir, port)
    assert "in 2 process(es)" in outputs[0]
    assert "loss" not in outputs[1]  # only process 0 logs
    one, two = losses(single), losses(multi)
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
    sampled = [[json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
                if "sampled" in line] for workdir in (single, multi)]
    assert sampled[0] == sampled[1] and sampled[0][-1]["sampled_examples"] == 8 * 8  # both processes' rows

    # Resume the two-process run from step 3 in two processes: bit for bit.
    for step in (6, 8):
        shutil.rmtree(multi / "checkpoints" / str(step))
    resumed_outputs = run_two_processes(multi, corpus_dir, port)
    assert "/checkpoints/3" in resumed_outputs[0]
    assert losses(multi) == two

    # ... and in one process: same batches, the same losses to float rounding.
    for step in (6, 8):
        shutil.rmtree(multi / "checkpoints" / str(step))
    resumed = run(multi, corpus_dir, "--config.mesh.rules=fsdp", devices=2)
    assert "resuming on 1 process(es) instead of 2" in resumed.stdout
    again = losses(multi)
    for step in range(4, 9):
        assert again[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)


def test_nonfinite_loss_stops_with_step_and_keeps_last_checkpoint(corpus_dir, tmp_path):
    workdir = tmp_path / "nan"
    result = subprocess.run(
        command(workdir, corpus_dir, "--config.train.learning_rate=1e30", "--config.train.clip_norm=0.0"),
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "non-finite loss or gradients at step" in result.stderr
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) \
        if (workdir / "checkpoints").exists() else []
    bad_step = int(result.stderr.split("at step ")[1].split()[0])
    assert all(step < bad_step for step in saved)



def _metrics_row(nonfinite: bool) -> dict:
    return {"loss": float("nan") if nonfinite else 1.0, "mlm/loss": float("nan") if nonfinite else 1.0,
            "mlm/accuracy": 0.0, "grad_norm": 1.0, "learning_rate": 1e-3, "mlm/masked_tokens": 4.0,
            "nonfinite": int(nonfinite)}


def test_skipped_updates_count_in_a_row_and_stop_the_run_at_the_limit(tmp_path):
    from xlm_jax.config import default_config
    from xlm_jax.errors import TrainingError
    from xlm_jax.modes.metrics_log import MetricsLog

    config = default_config()
    config.train.skip_nonfinite, config.train.max_consecutive_skips = True, 3
    metrics_log = MetricsLog(str(tmp_path), config, 20)
    for step, nonfinite in enumerate([False, True, True, False, True], start=1):
        metrics_log.add(step, _metrics_row(nonfinite), ["mlm"])
    assert len(metrics_log.flush()) == 5 and metrics_log.skip_streak == 1   # a good step ends a streak
    metrics_log.add(6, _metrics_row(True), ["mlm"])
    assert len(metrics_log.flush()) == 1 and metrics_log.skip_streak == 2
    metrics_log.add(7, _metrics_row(True), ["mlm"])
    with pytest.raises(TrainingError, match=r"3 updates in a row were non-finite and skipped \(steps 5-7; "
                                            r"train.max_consecutive_skips=3\)"):
        metrics_log.flush()
    metrics_log.close()


def test_skipping_never_checkpoints_an_open_streak_and_stops_at_the_limit(corpus_dir, tmp_path):
    workdir = tmp_path / "skips"
    result = subprocess.run(
        command(workdir, corpus_dir, "--config.train.learning_rate=1e30", "--config.train.clip_norm=0.0",
                "--config.train.skip_nonfinite=True", "--config.train.max_consecutive_skips=3"),
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "updates in a row were non-finite and skipped" in result.stderr
    assert "no checkpoint at step 3: its last" in result.stdout   # step 1's huge update ruined the params
    saved = [p.name for p in (workdir / "checkpoints").iterdir()] if (workdir / "checkpoints").exists() else []
    assert saved == []


def test_a_damaged_latest_checkpoint_is_skipped_by_every_reader_and_resume_is_exact(
        corpus_dir, uninterrupted_run, uninterrupted, tmp_path):
    import xlm_jax

    workdir = tmp_path / "damaged"
    shutil.copytree(uninterrupted_run, workdir)
    (workdir / "checkpoints" / "8" / "state" / "_METADATA").unlink()
    damaged = sorted(p.relative_to(workdir / "checkpoints" / "8") for p in (workdir / "checkpoints" / "8").rglob("*"))

    evaluated = run(workdir, corpus_dir, "--mode=evaluate", "--evals=mlm")   # read-only: falls back, moves nothing
    assert "checkpoints/8 is unreadable (TypeError" in evaluated.stdout
    assert "left the unreadable checkpoint(s) of step 8 in place" in evaluated.stdout
    assert json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    logs = []
    model = xlm_jax.load(str(workdir), log=logs.append)
    assert model.step == 6 and "checkpoints/8 is unreadable" in logs[0]
    model.export_hf(str(tmp_path / "exported"), log=logs.append)
    assert (tmp_path / "exported" / "model.safetensors").exists()
    assert (workdir / "checkpoints" / "8").is_dir() and not (workdir / "damaged_checkpoints").exists()

    resumed = run(workdir, corpus_dir)   # training: falls back to 6, sets 8 aside, trains 7 and 8 again
    assert "resumed from" in resumed.stdout and "/checkpoints/6 " in resumed.stdout
    assert f"moved the unreadable checkpoint of step 8 to {workdir / 'damaged_checkpoints' / '8'}" in resumed.stdout
    assert sorted(p.relative_to(workdir / "damaged_checkpoints" / "8")
                  for p in (workdir / "damaged_checkpoints" / "8").rglob("*")) == damaged
    assert (workdir / "checkpoints" / "8" / "state" / "_METADATA").exists()   # saved again
    assert losses(workdir) == uninterrupted

def test_bad_config_value_fails_fast_naming_the_field(corpus_dir, tmp_path):
    result = subprocess.run(command(tmp_path / "bad", corpus_dir, "--config.model.dtype=bf16"),
                            cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "model.dtype" in result.stderr and "bfloat16" in result.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_load_run_for_notebooks_encodes_and_predicts(uninterrupted_run, uninterrupted):
    import numpy as np
    import xlm_jax

    model = xlm_jax.load(str(uninterrupted_run))
    assert model.step == 8
    vectors = model.encode(["Hello world", "Habari ya dunia", "Γεια σου κόσμε"])
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    # Padding must not change a sentence's vector: encode alone == encode next to a longer one.
    alone = model.encode(["Hello world"])
    np.testing.assert_allclose(alone[0], vectors[0], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    predictions = model.predict_masked("The <mask> is here and <mask> there.", top_k=3)
    assert len(predictions) == 2 and all(len(p) == 3 for p in predictions)
    probs = [prob for p in predictions for _, prob in p]
    assert all(0 <= prob <= 1 for prob in probs) and predictions[0][0][1] >= predictions[0][1][1]
    with pytest.raises(ValueError, match="<mask>"):
        model.predict_masked("no mask here")


def test_resuming_with_another_model_is_a_clear_error_that_damages_nothing(
        corpus_dir, uninterrupted_run, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(uninterrupted_run, workdir)
    config_before = (workdir / "config.json").read_text()
    checkpoints_before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    result = subprocess.run(command(workdir, corpus_dir, "--config.model.hidden_size=48",
                                    "--config.train.num_steps=12"),
                            cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "xlm_jax: error: checkpoint" in result.stderr
    assert "shape" in result.stderr and "different model config" in result.stderr
    assert (workdir / "config.json").read_text() == config_before
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == checkpoints_before


def test_load_rejects_a_directory_that_is_not_a_run(tmp_path):
    import xlm_jax
    from xlm_jax.errors import CheckpointError

    with pytest.raises(CheckpointError, match="config.json"):
        xlm_jax.load(str(tmp_path))


def test_resuming_with_other_data_shards_is_refused_and_another_process_count_is_logged():
    from xlm_jax.config import default_config
    from xlm_jax.errors import ConfigError
    from xlm_jax.modes.prepare import resume_note

    config = default_config()
    config.train.batch_size, config.data.shards = 16, 0
    written = {"next_step": 3, "global_batch": 16, "process_count": 2, "shards": 16}
    assert resume_note(written, config, 2, "ckpt") is None
    assert resume_note(written, config, 1, "ckpt").startswith("resuming on 1 process(es) instead of 2: every global")
    config.data.shards = 8
    older = {key: value for key, value in written.items() if key != "shards"}   # before data.shards existed
    assert resume_note(older, config, 2, "ckpt") is None
    with pytest.raises(ConfigError, match=r"`data.shards`: the checkpoints in ckpt were written with 16 shards and "
                                          r"this config has 8.*--config.data.shards=16"):
        resume_note(written, config, 2, "ckpt")
