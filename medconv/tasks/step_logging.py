"""Training-loss logging that never makes a training step wait for the device.

Lightning's `self.log(..., on_step=True, prog_bar=True, sync_dist=True)` costs two things every step: the
progress bar turns the step value into a Python float (`.item()`, a device-to-host copy that waits for the whole
step to finish) and `sync_dist` all-reduces the step value across processes. Here the step value is copied to
the host only on the steps whose metrics Lightning writes (`Trainer(log_every_n_steps=...)`), and the epoch mean
is accumulated on the device and reduced across processes once, at the epoch end.

What a user sees, as with a plain `self.log(name, on_step=True, on_epoch=True)`:
- logger (metrics.csv): `<name>_step` every `log_every_n_steps` steps (the value of rank 0's batch) and
  `<name>_epoch` (mean over the epoch's samples and all processes);
- progress bar: `<name>_step` as read at the latest logging step, and `<name>_epoch` after each epoch;
- `trainer.callback_metrics`: `<name>` and `<name>_epoch` (the epoch mean, e.g. for a checkpoint `monitor`),
  and `<name>_step`.
"""

from __future__ import annotations

import lightning as L
import torch


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes step metrics after the current training step (its `should_update_logs` rule:
    every `log_every_n_steps` optimiser steps, every step under `fast_dev_run`)."""
    if trainer.fast_dev_run:
        return True
    every = trainer.log_every_n_steps
    return every > 0 and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)


def log_train_loss(module: L.LightningModule, loss: torch.Tensor, batch_size: int, name: str = "train/loss") -> torch.Tensor | None:
    """Logs `loss` from a `training_step`; returns its host copy on logging steps (None on the others)."""
    value = loss.detach()
    module.log(f"{name}_epoch", value, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
    module.log(name, value, on_step=False, on_epoch=True, logger=False, batch_size=batch_size, sync_dist=True)
    try:
        trainer = module.trainer
    except RuntimeError:  # a step called without a Trainer: self.log above only warned
        return None
    if not is_logging_step(trainer):
        return None
    host = value.float().cpu()  # the one device-to-host copy, on the steps the logger writes anyway
    # a host tensor: the progress bar re-reads it every step until the next logging step at no device cost
    module.log(f"{name}_step", host, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
    return host
