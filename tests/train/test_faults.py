"""Faults at the I/O edge, injected for real: each ends in one line naming what failed, and
nothing is lost: the last good checkpoint restores and reproduces the uninterrupted run.

The disk-full case mounts a small tmpfs (root only; skipped where mounting is not permitted).
"""
import math
import os
import pathlib
import subprocess

import pytest

from tests.train.test_loop import (REPO_ROOT, command, corpus_dir, environment, losses, run,  # noqa: F401
                                   uninterrupted, uninterrupted_run)


def _disk_bytes(paths) -> int:
    """What the files take on a tmpfs: whole 4 KiB pages."""
    return sum(math.ceil(p.stat().st_size / 4096) * 4096 for p in paths if p.is_file())


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a tmpfs of that many bytes at tmp_path/disk; remount(size) grows it."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()

    def mount(size: int, remount: bool = False) -> pathlib.Path:
        options = f"{'remount,' if remount else ''}size={size}"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")
        return mountpoint

    yield mount
    subprocess.run(["umount", str(mountpoint)], capture_output=True)


def test_a_full_disk_during_a_save_is_one_line_and_the_run_resumes_exactly(
        small_disk, corpus_dir, uninterrupted_run, uninterrupted):   # noqa: F811
    files = [p for p in uninterrupted_run.rglob("*") if "checkpoints" not in p.relative_to(uninterrupted_run).parts]
    checkpoint = _disk_bytes((uninterrupted_run / "checkpoints" / "3").rglob("*"))
    # Room for everything but the checkpoints, and one and a half of them: step 3's fits, step 6's does not.
    disk = small_disk(_disk_bytes(files) + checkpoint * 3 // 2)
    workdir = disk / "run"
    full = subprocess.run(command(workdir, corpus_dir), cwd=REPO_ROOT, env=environment(), capture_output=True,
                          text=True, timeout=600)
    assert full.returncode == 2, full.stdout + full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("xlm_jax: error:")]
    assert len(errors) == 1 and "Traceback" not in full.stderr, full.stderr
    assert errors[0].startswith(f"xlm_jax: error: checkpoint {workdir}/checkpoints/6 could not be written: no "
                                f"space left in {workdir}/checkpoints (")
    assert "the checkpoints before it are intact" in errors[0] and "it needs about" in errors[0]
    assert (workdir / "checkpoints" / "3").is_dir()
    small_disk(64 * 2**20, remount=True)   # space freed: the same command resumes from step 3
    resumed = run(workdir, corpus_dir)
    assert f"resumed from {workdir}/checkpoints/3" in resumed.stdout
    assert losses(workdir) == uninterrupted
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6", "8"]
