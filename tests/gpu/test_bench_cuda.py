"""On a GPU: what `medconv bench gpu` relies on when it measures memory.

CUDA peak memory is per row, and rows that share a worker process (the memory section runs four per
process) measure what a fresh process would, even after an out-of-memory row between them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from medconv.bench.isolated import run_many
from medconv.bench.measure import Config, measure

pytestmark = pytest.mark.gpu

TINY = Config(model="convnext_atto", height=256, width=128, batch_size=2, precision="bf16-mixed", device="cuda",
              steps=1, warmup=1, model_args={"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]})


def test_measure_reports_cuda_peak_memory_of_the_row_and_the_gpu():
    row = measure(TINY)
    assert row["status"] == "ok" and math.isfinite(row["images_per_s"])
    assert row["mem_kind"] == "cuda_peak_allocated" and row["device_name"] == torch.cuda.get_device_name(0)
    assert row["peak_mem_mb"] * 2**20 >= 2 * 3 * 256 * 128 * 4  # at least the float32 input batch


def test_rows_sharing_a_process_measure_alike_even_after_an_oom():
    starved = replace(TINY, memory_budget_gb=1e-4)  # a 100 KiB cap: the first allocation fails
    first, oom, again = run_many([TINY, starved, TINY], timeout_s=300)
    assert (first["status"], oom["status"], again["status"]) == ("ok", "oom", "ok")  # the cap did not stick
    assert again["start_alloc_mb"] <= 64  # what is left between rows: at most cuBLAS workspaces
    assert again["peak_mem_mb"] == pytest.approx(first["peak_mem_mb"], rel=0.1, abs=32)
