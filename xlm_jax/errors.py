"""Errors a user can act on: each names the file, line or config field and the fix."""
import sys


class XlmJaxError(Exception):
    """Base class of every error xlm_jax raises on purpose."""


class ConfigError(XlmJaxError):
    """A config field is missing, has the wrong type, or an unsupported value."""


class DataError(XlmJaxError):
    """A corpus file or directory cannot be used as given."""


class CheckpointError(XlmJaxError):
    """A checkpoint is missing, damaged, or belongs to another model."""


class TrainingError(XlmJaxError):
    """Training cannot go on (non-finite loss or gradients)."""


def fail(message: str) -> None:
    """Ends a command-line program with one line, `xlm_jax: error: ...`, and exit status 2."""
    print(f"xlm_jax: error: {message}", file=sys.stderr)
    sys.exit(2)
