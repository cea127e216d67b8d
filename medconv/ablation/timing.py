"""Training speed and memory of a fit, measured inside it and written beside its summary (`<run>/timing.json`).

Why inside: the runner only sees a child process, whose wall time includes start-up, data generation and
validation. Images per second here count training steps only, after the first few (warm-up, lazy init).
"""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch

from medconv.callbacks.files import run_dir
from medconv.io.atomic import write_json

TIMING = "timing.json"


class StepTimer(L.Callback):
    """Args:
        skip: first training steps left out of the rate (compilation, allocator and loader warm-up).
    """

    def __init__(self, skip: int = 3):
        self.skip = skip
        self.seconds = 0.0
        self.images = 0
        self.steps = 0
        self._start: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if self._start is None:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.steps += 1
        if self.steps > self.skip:
            self.seconds += time.perf_counter() - self._start
            self.images += _batch_size(batch)
        self._start = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB on Linux, bytes on macOS
        timing = {
            "train_images_per_s": self.images / self.seconds if self.seconds > 0 else None,
            "timed_steps": max(0, self.steps - self.skip),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
        write_json(run_dir(trainer) / TIMING, timing)


def _batch_size(batch: object) -> int:
    image = batch.get("image") if isinstance(batch, dict) else batch[0] if isinstance(batch, list | tuple) else batch
    return int(image.shape[0]) if hasattr(image, "shape") else 0
