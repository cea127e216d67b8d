"""Self-supervised pretraining: one LightningModule for every objective (masked image modelling, DINO, ...).

The objective is an `nn.Module` built from the backbone (`Callable[[nn.Module], nn.Module]` in the config, so
the CLI links the data's image size and channels into `model.init_args.backbone` as for classification); its
forward returns a dict with `loss`. This module only optimises, logs and schedules; the encoder it exports is
`objective.export_encoder()` (`medconv.callbacks.EncoderExport` writes it to `<run>/encoder.safetensors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from medconv.errors import ConfigError
from medconv.tasks.run_record import RunRecord
from medconv.tasks.schedules import WarmupCosine, optimization
from medconv.tasks.step_logging import log_train_loss

# Parameters that weight decay would only shrink towards zero without regularising anything: normalisation
# scales and shifts, biases, learned tokens and position tables (as in MAE, SimMIM and DINO).
NO_DECAY_NAMES = ("mask_token", "cls_token", "pos_embed", "relative_position_bias_table", "logit_scale", "gamma")


class PretrainModule(RunRecord, L.LightningModule):
    """Args:
        backbone: the encoder to pretrain (`medconv.models.TimmBackbone`).
        objective: builds the objective from the backbone, e.g. `medconv.ssl.MaskedImageModelling` or
            `medconv.ssl.DINO` with their own arguments.
        num_classes, eval_groups: linked from the data by the CLI; used only by probes on labelled subsets.
        optimizer: called with two parameter groups (decayed weights; norms, biases and tokens without decay).
        scheduler: called with the optimiser; `WarmupCosine` by default.
    """

    task = "pretrain"

    def __init__(
        self,
        backbone: nn.Module,
        objective: Callable[[nn.Module], nn.Module],
        num_classes: int = 2,
        eval_groups: dict[str, list[str]] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosine,
        scheduler_interval: Literal["step", "epoch"] = "step",
    ):
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(f"scheduler_interval must be 'step' or 'epoch', not {scheduler_interval!r}")
        self.save_hyperparameters(ignore=["backbone", "objective", "optimizer", "scheduler"])
        self.backbone = backbone
        self.objective = objective(backbone) if not isinstance(objective, nn.Module) else objective
        if getattr(self.objective, "export_encoder", None) is None:
            raise ConfigError(f"{type(self.objective).__name__} is not a pretraining objective: it has no export_encoder().")
        self.num_classes = num_classes
        self.eval_groups = dict(eval_groups or {})
        self.group_reduce = "max"
        self.eval_rows: dict = {}
        self.eval_metrics: dict[str, float] = {}
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self._loss_nonfinite: torch.Tensor | None = None  # device flag: any non-finite loss since the fit began

    @property
    def method(self) -> str:
        return type(self.objective).__name__

    def encoder(self) -> nn.Module:
        """The backbone whose weights are exported and probed (DINO: the teacher's)."""
        return self.objective.export_encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of the exported encoder, so `predict` gives embeddings."""
        return self.encoder()(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.objective(batch)
        loss = out["loss"]
        # a device-side flag, read where the host reads anyway (logging steps, epoch end): a check per step would sync
        bad = ~torch.isfinite(loss.detach())
        self._loss_nonfinite = bad if self._loss_nonfinite is None else self._loss_nonfinite | bad
        size = _batch_size(batch)
        if log_train_loss(self, loss, size) is not None:  # no device sync between logging steps
            self._check_finite_loss()
        scalars = {f"train/{k}": v.detach().float() for k, v in out.items() if k != "loss" and torch.is_tensor(v) and v.ndim == 0}
        if scalars:
            self.log_dict(scalars, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def on_train_epoch_end(self) -> None:
        self._check_finite_loss()

    def _check_finite_loss(self) -> None:
        if self._loss_nonfinite is not None and bool(self._loss_nonfinite):
            raise FloatingPointError(
                f"{self.method}: the loss became non-finite (NaN or inf) by step {self.global_step}; lower the LR or use "
                "bf16/32-bit. (Checked every trainer.log_every_n_steps steps and at each epoch end.)"
            )

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        after = getattr(self.objective, "after_optimizer_step", None)
        if after is not None:
            # Lightning counts this step only after optimizer_step returns: pass the steps done, this one included.
            after(self.trainer.global_step + 1, max(1, int(self.trainer.estimated_stepping_batches)))

    def configure_optimizers(self):
        return optimization(self, self.parameter_groups(), self.optimizer_factory, self.scheduler_factory, self.scheduler_interval)

    def parameter_groups(self) -> list[dict]:
        """Trainable parameters (an EMA teacher's are frozen), split by whether weight decay applies."""
        decay, no_decay = [], []
        for name, param in self._trainable():
            (no_decay if param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES else decay).append(param)
        groups = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def _trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        seen: set[int] = set()
        for name, param in self.named_parameters():  # backbone params appear once, under backbone.*
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                yield name, param


def _batch_size(batch: dict) -> int:
    from medconv import keys

    image = batch.get(keys.IMAGE)
    if image is None:
        image = batch[getattr(keys, "CROPS", "crops")][0]
    return len(image)
