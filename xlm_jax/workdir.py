"""The run directory, created and checked writable before anything is read or compiled, and
files in it written whole or not at all."""
import uuid

from etils import epath

from xlm_jax.errors import XlmJaxError


def make_workdir(workdir: str) -> None:
    """Creates the run directory (local or gs://) and writes and removes a probe file in it,
    so that a directory that cannot be written fails now, naming it, not after the corpus
    has been read."""
    path = epath.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except Exception as error:   # OSError locally; the filesystem's own errors on gs://
        raise XlmJaxError(f"--workdir={workdir}: cannot create it ({getattr(error, 'strerror', None) or error}); "
                          "choose a directory you can write, or fix its permissions") from None
    probe = path / f".write-check-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as error:
        raise XlmJaxError(f"--workdir={workdir}: cannot write to it ({getattr(error, 'strerror', None) or error}); "
                          "choose a directory you can write, or fix its permissions") from None


def write_atomically(path, data: bytes) -> None:
    """Writes a temp file and renames it, so a killed run never leaves half a file."""
    path = epath.Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    tmp.replace(path)
