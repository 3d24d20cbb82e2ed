"""What every xlm_jax command line shares: absl flags whose mistakes end in one clear line.

absl shows a flag it cannot parse as one line, but an override of a config field that
does not exist (`--config.train.bogus=3`), a config file that is missing or raises, and
an XlmJaxError from the program itself would surface as tracebacks. `run(main)` turns each
into `xlm_jax: error: ...` and exit status 2.
"""
import os
import re

from absl import app, flags

from xlm_jax.errors import XlmJaxError, fail


def _config_override(name: str, argv) -> str:
    """The --config.* argument that names the missing field `name`, or ""."""
    for arg in argv:
        if arg.startswith("--config.") and name in re.split(r"[.=]", arg[len("--config."):]):
            return arg
    return ""


def _unknown_field(error: BaseException, argv) -> str | None:
    """The message for an override of a field that does not exist, or None if `error` is not
    that: ml_collections raises AttributeError(KeyError(KeyError(name))) with a near-miss hint."""
    chain, cause = [], error
    while cause is not None:
        chain.append(cause)
        cause = cause.__context__
    name = str(chain[-1].args[0]) if chain[-1].args else ""
    arg = _config_override(name, argv) if name else ""
    if not arg:
        return None
    parents = arg[len("--config."):].split("=")[0].split(".")
    parents = parents[:parents.index(name)]
    message = f"config field `{'.'.join(parents + [name])}` (from {arg}) does not exist"
    hint = next((m.group(1) for e in chain if (m := re.search(r'Did you mean "([^"]+)"', str(e)))), None)
    if hint:
        message += f"; did you mean `{'.'.join(parents + [hint])}`?"
    return message + " (every field, with its default: xlm_jax/config.py)"


def _config_file_problem(error: BaseException, argv) -> str:
    arg = next((a for a in argv if a.startswith("--config=")), "--config")
    path = arg.removeprefix("--config=").split(":")[0]
    if not os.path.isfile(path):
        recipes = f"; the recipes are in configs/ ({', '.join(sorted(os.listdir('configs')))})" \
            if os.path.isdir("configs") else ""
        return f"{arg}: no such file{recipes}"
    return (f"{arg}: the config file could not be loaded ({type(error).__name__}: "
            f"{' '.join(str(error).split())})")


def parse_flags(argv):
    """absl's parsing, with every mistake in a flag or a config override as one line."""
    try:
        remaining = flags.FLAGS(argv)
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        if config is not None:
            config.get("model")   # config_flags defers a failed load to the first attribute access
        return remaining
    except flags.Error as error:            # an unknown flag, a value of the wrong type
        fail(f"{error} (see --helpshort)")
    except Exception as error:              # a field that does not exist; a config file missing or raising
        fail(_unknown_field(error, argv) or _config_file_problem(error, argv))


def run(main) -> None:
    """app.run(main) with clean errors: flag mistakes (parse_flags) and any XlmJaxError."""

    def main_or_fail(argv):
        try:
            return main(argv)
        except XlmJaxError as error:
            fail(str(error))

    app.run(main_or_fail, flags_parser=parse_flags)

