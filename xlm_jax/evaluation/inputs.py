"""Reading evaluation data: errors that name the file and line, and the files' sha256."""
import hashlib

from etils import epath

from xlm_jax.errors import DataError


def read_lines(path, what: str = "file", allow_empty: bool = False) -> list[str]:
    """The lines of a UTF-8 text file (no line endings). `what` says, in errors, what it is for."""
    path = epath.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({error.reason} at byte {error.start})") from None
    # Only \n (and \r\n) end a line: str.splitlines would also split at U+2028, U+0085, ... inside a
    # sentence (XNLI's Greek test set has one), shifting every line after it.
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines and not allow_empty:
        raise DataError(f"{path}: {what} is empty")
    return lines


def check_aligned(path_a, lines_a: list, path_b, lines_b: list) -> None:
    """Line-aligned files (line i of one translates line i of the other) have equal line counts."""
    if len(lines_a) != len(lines_b):
        raise DataError(f"{path_a} has {len(lines_a)} lines and {path_b} has {len(lines_b)}: "
                        "line-aligned files must have the same number of lines")


def sha256(path) -> str:
    return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()
