"""How many DataLoader workers a slide pipeline process gets when the user does not say (`--num-workers auto`).

On a GPU the model leaves the CPU to the loader: one worker reads ~1,500 tiles/s through the fast reader (224²
JPEG tiles, measured on a 2-core VM), while a GPU can score several thousand tiles/s of a small or mid-sized model,
so the workers take every core of the process's share except two (the main process: batches to the device, the
slide preparer thread, the writer).
On a CPU the model itself runs on every core and the loader needs ~1/15 of the model's CPU time per tile:
one worker per 8 cores is enough to keep it fed, and more only takes cores from the model (measured on 2 cores:
0.98 of the model bound with 1 worker, 0.87-0.90 with 2; docs/benchmarks.md).
"""

from __future__ import annotations

import os

AUTO = "auto"
MAX_GPU_WORKERS = 16  # past this the readers contend for the disk and the pinned memory grows, not the rate


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and `taskset` set), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def processes_per_node(accelerator: str, devices: int | str | list[int]) -> int:
    """How many processes Lightning starts on this node for `devices`."""
    if isinstance(devices, list):
        return max(len(devices), 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if accelerator in ("gpu", "cuda"):
        import torch

        return max(torch.cuda.device_count(), 1)
    return 1


def loader_workers(requested: int | str | None, accelerator: str, devices: int | str | list[int],
                   cores: int | None = None) -> int:
    """The worker count: `requested` when it is a number, else the rule in the module docstring."""
    if requested not in (None, AUTO):
        try:
            workers = int(requested)
        except (TypeError, ValueError):
            raise ValueError(f"--num-workers must be a number or {AUTO!r}, got {requested!r}") from None
        if workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {workers}")
        return workers
    share = max((cores or available_cores()) // processes_per_node(accelerator, devices), 1)
    if accelerator in ("gpu", "cuda", "mps"):
        return min(max(share - 2, 1), MAX_GPU_WORKERS)
    return max(share // 8, 1)
