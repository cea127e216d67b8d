"""Shared fixtures: where the real files are (skip when absent), tiny deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def realdata_path() -> Path:
    return Path(os.environ.get("MEDCONV_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/realdata (or $MEDCONV_REALDATA); tests using it skip when it is absent."""
    path = realdata_path()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast as two, and far faster when other jobs share a 2-core CPU
    (OpenMP threads spin against them). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
