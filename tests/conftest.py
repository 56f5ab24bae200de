"""Shared fixtures: the real data that CI has at ../shared/data, skipped with a reason elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``shared/data`` folder beside the repository (real Omniglot zips, split files)."""
    path = REPO.parent / "shared" / "data"
    if not (path / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"real data not found at {path}: these tests need the project's shared/data folder "
                    "(CI has it); the embedded Omniglot tests still run without it")
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Unit tests use tiny tensors that gain nothing from intra-op threads, while two OpenMP threads per
    process on a busy 2-core machine make them many times slower. Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
