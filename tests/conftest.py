"""Shared fixtures: where the real multilingual test data lives (never copied into the repo)."""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """$XLM_JAX_TEST_DATA or ../shared/data next to the repo; skips the test where it is absent."""
    path = pathlib.Path(os.environ.get("XLM_JAX_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "mono").is_dir():
        pytest.skip(f"multilingual test data not found at {path}; set XLM_JAX_TEST_DATA to its directory")
    return path
