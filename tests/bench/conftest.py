"""Benchmarks under test measure nothing worth keeping: one thread each, so that on a shared 2-core
machine OpenMP threads do not spin against each other (that made these tests 3-5x slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker processes the benchmarks start
    yield
    torch.set_num_threads(threads)
