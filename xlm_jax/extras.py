"""Optional packages: which extra of setup.py installs each, and one clean error when one is
missing, raised before any data is read (a user should not meet a bare ImportError from deep
inside an import an hour into a run)."""
import importlib
import importlib.util

from xlm_jax.errors import XlmJaxError

EXTRA_OF = {"torch": "hf", "transformers": "hf",   # package -> the extra that installs it
            "libtpu": "plan", "jax_cuda12_plugin": "plan"}


class MissingPackage(XlmJaxError):
    """An optional package a requested feature needs is not installed."""


def install_command(package: str) -> str:
    extra = EXTRA_OF[package]
    return f"pip install 'xlm_jax[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def available(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:   # "a.b" whose "a" is not there
        return False


def require(package: str, purpose: str):
    """The imported `package`, or MissingPackage naming it, what needs it and the install command."""
    if not available(package):
        raise MissingPackage(f"{purpose} needs the `{package}` package, which is not installed: "
                             f"{install_command(package)}")
    return importlib.import_module(package)
