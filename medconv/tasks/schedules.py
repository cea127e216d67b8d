"""Learning-rate schedules that need the run's length, which only the trainer knows.

A scheduler with `bind_schedule(total_steps, steps_per_epoch)` gets the run length from the task in
`configure_optimizers`; any other `LRSchedulerCallable` (StepLR, OneCycleLR with its own totals, ...) is
used as given.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from medconv.errors import ConfigError


class WarmupCosine(LRScheduler):
    """Linear warmup from `min_lr_ratio` to the base LR over `warmup_epochs` (or `warmup_steps`, which wins), then
    cosine decay back to it.

    Stepped per optimisation step. Until `bind_schedule` is called the factor is 1 (plain base LR). `warmup_steps`
    is for runs whose length is set in steps (`max_steps`, the ablations' compute matching), where an epoch's
    length changes with the label fraction.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        last_epoch: int = -1,
        warmup_steps: int | None = None,
    ):
        if warmup_steps is not None and warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if warmup_epochs < 0 or not 0 <= min_lr_ratio <= 1:
            raise ConfigError(f"warmup_epochs must be >= 0 and min_lr_ratio in [0, 1], got {warmup_epochs}, {min_lr_ratio}")
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, last_epoch)

    def bind_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps, self.steps_per_epoch = max(1, total_steps), max(1, steps_per_epoch)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def factor(self, step: int) -> float:
        if self.total_steps is None:
            return 1.0
        total, floor = self.total_steps, self.min_lr_ratio
        wanted = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_epochs * (self.steps_per_epoch or total))
        warmup = min(wanted, total - 1)
        if step < warmup:
            return floor + (1 - floor) * (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def get_lr(self) -> list[float]:
        step = max(0, self.last_epoch)
        return [base * self.factor(step) for base in self.base_lrs]


def optimization(module, params, optimizer_factory, scheduler_factory, interval: str = "step") -> dict | Optimizer:  # noqa: ANN001
    """The optimiser and its scheduler as Lightning takes them; a `bind_schedule` scheduler learns the run's length
    (shared by every task, so classification and pretraining schedule alike)."""
    optimizer = optimizer_factory(params)
    if scheduler_factory is None:
        return optimizer
    scheduler = scheduler_factory(optimizer)
    if hasattr(scheduler, "bind_schedule"):
        trainer = module.trainer
        total = max(1, int(trainer.estimated_stepping_batches))  # also sets up the train loader, so its length is known
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:  # an epoch's optimiser steps, whether the run ends by epochs or steps
            per_epoch = math.ceil(batches / max(1, trainer.accumulate_grad_batches))
        else:
            per_epoch = total // max(1, trainer.max_epochs or 1)
        scheduler.bind_schedule(total, max(1, per_epoch))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
