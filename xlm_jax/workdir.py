"""The run directory: created and checked writable before anything is read or compiled, held by
one command at a time, and files in it written whole or not at all."""
import contextlib
import datetime
import json
import os
import signal
import socket
import threading
import time
import uuid

from etils import epath

from xlm_jax.errors import XlmJaxError

LOCK_FILE = "xlm_jax.lock"
LEASE_SECONDS = 600   # a lock whose holder has not renewed it for this long is stale (any filesystem)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


def _stale(holder: dict, now: float, lease_seconds: float) -> str | None:
    """Why the lock `holder` describes is stale, or None while it is held."""
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"its process {holder.get('pid')} on this host is gone"
    age = now - float(holder.get("renewed", 0))
    if age > lease_seconds:
        return f"its holder last renewed it {age / 60:.0f} minutes ago (the lease is {lease_seconds / 60:g})"
    return None


class WorkdirLock:
    """An exclusive lock on a directory: `<dir>/xlm_jax.lock`, a JSON record of the holder (host,
    PID, what it does, since when), renewed every lease/4 by a thread and removed on exit.

    Two commands writing one run directory would interleave checkpoints and metrics.jsonl rows,
    so a second one fails at once, naming the holder. A lock left by a holder that died is
    stale: on this host when its PID is gone, anywhere (gs:// included) when it was not renewed
    for `lease_seconds`; the next command takes it over and says so. Locally the lock is created
    with O_EXCL; on gs:// it is written and read back, which leaves a window of a second in which
    two commands starting together could both believe they hold it.
    """

    def __init__(self, directory: str, purpose: str, log=print, lease_seconds: float = LEASE_SECONDS):
        self.directory, self.purpose, self.log, self.lease = directory, purpose, log, lease_seconds
        self.path = epath.Path(directory) / LOCK_FILE
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
                       "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread = None

    def _write(self, exclusive: bool) -> bool:
        data = json.dumps({**self.record, "renewed": time.time()}).encode("utf-8")
        if not exclusive:
            write_atomically(self.path, data)
            return True
        if str(self.path).startswith("gs://"):
            if self.path.exists():
                return False
            write_atomically(self.path, data)
            return self._holder().get("token") == self.record["token"]
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError):   # half-written by a holder killed mid-write: nobody holds it
            return {"renewed": 0}

    def acquire(self) -> "WorkdirLock":
        for _ in range(3):
            if self._write(exclusive=True):
                break
            holder = self._holder()
            if not holder:       # released between our attempt and the read
                continue
            why = _stale(holder, time.time(), self.lease)
            if why is None:
                raise XlmJaxError(
                    f"--workdir={self.directory} is in use: {holder.get('purpose', 'a command')} on "
                    f"{holder.get('host', '?')}, PID {holder.get('pid', '?')}, since {holder.get('since', '?')}; "
                    f"wait for it to finish or use another directory (a lock whose process has died is taken "
                    f"over by the next command: {self.path})")
            self.log(f"{self.path}: taking over a stale lock ({holder.get('purpose', '?')} on "
                     f"{holder.get('host', '?')}, PID {holder.get('pid', '?')}, since {holder.get('since', '?')}: {why})")
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            raise XlmJaxError(f"--workdir={self.directory}: could not take {self.path}; another command keeps "
                              "taking it")
        self._thread = threading.Thread(target=self._renew, daemon=True, name="xlm_jax-workdir-lock")
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 4):
            if self._holder().get("token") == self.record["token"]:
                with contextlib.suppress(OSError):
                    self._write(exclusive=False)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holder().get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def hold_workdir(directory: str, purpose: str, primary: bool = True, log=print):
    """Creates `directory` (make_workdir) and holds its lock for the block; in a multi-process
    run only the primary process (process 0) takes it, and the others trust it."""
    make_workdir(directory)
    if not primary:
        yield None
        return
    with WorkdirLock(directory, purpose, log) as lock, _sigterm_exits():
        yield lock


@contextlib.contextmanager
def _sigterm_exits():
    """SIGTERM, where nothing else handles it, ends the process through Python's exit (exit
    status 143), so that the lock is released as on any other exit; the training loop installs
    its own handler (finish the step, save) while it runs."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def exit_on_sigterm(signum, frame):
        del frame
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
