"""Reading the JSON files a user can hand us (run configs, transformers configs) with errors
that name the file, the line and the fix, instead of a bare JSONDecodeError."""
import json

from etils import epath

from xlm_jax.errors import XlmJaxError


def read_json_object(path, fix: str, error: type[XlmJaxError] = XlmJaxError) -> dict:
    """The JSON object in `path`; `error` naming the file, line and column, and `fix`, if it
    is not valid UTF-8 JSON or not an object."""
    path = epath.Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (byte {e.start}); {fix}") from None
    except json.JSONDecodeError as e:
        problem = "is empty" if not e.doc.strip() else f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        raise error(f"{path} {problem}; {fix}") from None
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, not {type(value).__name__}; {fix}")
    return value
