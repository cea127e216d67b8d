"""`--num-workers auto`: every core but two per GPU process, one worker per 8 cores when the model is on the CPU."""

from __future__ import annotations

import pytest

from medconv.slides.loader_workers import MAX_GPU_WORKERS, loader_workers, processes_per_node


@pytest.mark.parametrize(("accelerator", "devices", "cores", "workers"), [
    ("gpu", 1, 16, 14),  # one H100 with 16 cores: the loader gets all but the main process's two
    ("gpu", 8, 96, 10),  # 8 GPUs share 96 cores: 12 each
    ("gpu", 1, 128, MAX_GPU_WORKERS),
    ("gpu", [0, 1], 4, 1),  # never none on a GPU: reading in the main process would stall the device
    ("cpu", 1, 2, 1),  # this project's 2-core VM
    ("cpu", 1, 64, 8),
    ("cpu", 2, 2, 1),  # 2 CPU processes (DDP on a CPU)
])
def test_auto_rule(accelerator, devices, cores, workers):
    assert loader_workers("auto", accelerator, devices, cores=cores) == workers
    assert loader_workers(None, accelerator, devices, cores=cores) == workers


def test_a_number_is_taken_as_given_and_nonsense_is_refused():
    assert loader_workers("0", "gpu", 1, cores=16) == 0
    assert loader_workers(6, "cpu", 1, cores=2) == 6
    for bad in ("many", "-1"):
        with pytest.raises(ValueError, match="--num-workers"):
            loader_workers(bad, "cpu", 1)


def test_processes_per_node_counts_lists_and_numbers():
    assert processes_per_node("gpu", [0, 1, 2]) == 3
    assert processes_per_node("cpu", 4) == 4
    assert processes_per_node("cpu", "auto") == 1
