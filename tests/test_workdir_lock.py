"""One command per run directory (xlm_jax/workdir.WorkdirLock): a second one fails at once naming
the holder; a dead holder's lock is taken over; the lock goes on every exit, SIGTERM included."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.train.test_loop import REPO_ROOT, environment
from xlm_jax.errors import XlmJaxError
from xlm_jax.workdir import LOCK_FILE, WorkdirLock, hold_workdir

HOLD = """
import sys, time
from xlm_jax.workdir import hold_workdir
with hold_workdir(sys.argv[1], "training"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(directory):
    """A process holding `directory`'s lock, once it holds it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO_ROOT, env=environment(),
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(directory, **record):
    (directory / LOCK_FILE).write_text(json.dumps({"purpose": "training", "since": "2026-01-01T00:00:00+00:00",
                                                   **record}))


def test_a_second_command_fails_at_once_naming_the_holder(tmp_path):
    with WorkdirLock(str(tmp_path), "training"):
        with pytest.raises(XlmJaxError, match=rf"--workdir={tmp_path} is in use: training on "
                                              rf"{socket.gethostname()}, PID {os.getpid()}, since 20"):
            WorkdirLock(str(tmp_path), "evaluation").acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    with WorkdirLock(str(tmp_path), "evaluation"):   # free again
        assert json.loads((tmp_path / LOCK_FILE).read_text())["purpose"] == "evaluation"


def test_the_cli_refuses_a_workdir_another_process_holds(tmp_path):
    holder = _holder(tmp_path)
    try:
        result = subprocess.run([sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py",
                                 f"--workdir={tmp_path}"], cwd=REPO_ROOT, env=environment(), capture_output=True,
                                text=True, timeout=300)
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=60)
    errors = [line for line in result.stderr.splitlines() if line.startswith("xlm_jax: error:")]
    assert result.returncode == 2, result.stderr
    assert errors == [f"xlm_jax: error: --workdir={tmp_path} is in use: training on {socket.gethostname()}, "
                      f"PID {holder.pid}, since {errors[0].split(', since ')[1].split(';')[0]}; wait for it to "
                      "finish or use another directory (a lock whose process has died is taken over by the next "
                      f"command: {tmp_path / LOCK_FILE})"]
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == []   # it wrote nothing, and the holder released its lock


def test_sigterm_releases_the_lock(tmp_path):
    holder = _holder(tmp_path)
    assert (tmp_path / LOCK_FILE).exists()
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=60) == 128 + signal.SIGTERM
    assert not (tmp_path / LOCK_FILE).exists()


def test_an_exception_releases_the_lock(tmp_path):
    with pytest.raises(RuntimeError):
        with hold_workdir(str(tmp_path), "training"):
            raise RuntimeError("crash")
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_whose_process_died_on_this_host_is_taken_over(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, host=socket.gethostname(), pid=pid, renewed=time.time())
    logs = []
    with WorkdirLock(str(tmp_path), "training", log=logs.append):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert logs == [f"{tmp_path / LOCK_FILE}: taking over a stale lock (training on {socket.gethostname()}, "
                    f"PID {pid}, since 2026-01-01T00:00:00+00:00: its process {pid} on this host is gone)"]


def test_another_hosts_lock_is_stale_only_once_its_lease_ran_out(tmp_path):
    _write_lock(tmp_path, host="tpu-worker-7", pid=1, renewed=time.time() - 30)
    with pytest.raises(XlmJaxError, match="is in use: training on tpu-worker-7, PID 1"):
        WorkdirLock(str(tmp_path), "training", lease_seconds=600).acquire()
    _write_lock(tmp_path, host="tpu-worker-7", pid=1, renewed=time.time() - 1200)
    logs = []
    with WorkdirLock(str(tmp_path), "training", log=logs.append, lease_seconds=600):
        pass
    assert "its holder last renewed it 20 minutes ago (the lease is 10)" in logs[0]


def test_the_holder_renews_its_lease(tmp_path):
    with WorkdirLock(str(tmp_path), "training", lease_seconds=0.4):
        first = json.loads((tmp_path / LOCK_FILE).read_text())["renewed"]
        time.sleep(0.5)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["renewed"] > first


def test_only_the_primary_process_takes_the_lock(tmp_path):
    with hold_workdir(str(tmp_path), "training", primary=False) as lock:
        assert lock is None and not (tmp_path / LOCK_FILE).exists()
