"""Shared fixtures: the real data that CI has at ../shared/data, skipped with a reason elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``shared/data`` folder beside the repository (real Omniglot zips, split files)."""
    path = REPO.parent / "shared" / "data"
    if not (path / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"real data not found at {path}: these tests need the project's shared/data folder "
                    "(CI has it); the embedded Omniglot tests still run without it")
    return path
