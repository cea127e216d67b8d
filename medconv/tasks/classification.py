"""Image/tile classification: an injected backbone and criterion, a linear head, optimiser and LR schedule
from the config, and evaluation rows that the output callbacks (medconv.callbacks) turn into files."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from medconv import keys
from medconv.errors import ConfigError
from medconv.tasks.evaluation import META_KEYS, EvalRows
from medconv.tasks.run_record import RunRecord
from medconv.tasks.schedules import WarmupCosine, optimization
from medconv.tasks.step_logging import log_train_loss


class ClassificationModule(RunRecord, EvalRows, L.LightningModule):
    """Metrics per image and per group: `eval_groups={"breast": ["exam_id", "laterality"]}` scores a breast by
    `group_reduce` (max: a lesion seen in any view counts) over its views; `{"slide": ["slide_id"]}` scores a
    slide by its tiles.

    The backbone is an `nn.Module` returning pooled features with a `num_features` attribute
    (`medconv.models.TimmBackbone`); `num_classes` and `eval_groups` are linked from the data by the CLI.
    After each evaluation epoch, `eval_rows` (per-sample probabilities with ids, gathered over processes) and
    `eval_metrics` hold what the callbacks write.

    Args:
        criterion: any loss module, e.g. `medconv.tasks.CrossEntropy` (class weights, label smoothing) or
            `medconv.tasks.FocalLoss`; default plain cross-entropy.
        optimizer: called with the parameters.
        scheduler: called with the optimiser; one with `bind_schedule` (the default `WarmupCosine`) gets the
            run's length. None: a constant LR.
        scheduler_interval: `step` or `epoch`, when the scheduler steps.
        freeze_backbone: a linear probe: the backbone (e.g. an SSL encoder from `pretrained_path`) keeps its
            weights and its normalisation statistics (it stays in eval mode); only the head trains.
    """

    task = "classify"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        criterion: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosine,
        scheduler_interval: Literal["step", "epoch"] = "step",
        head_dropout: float = 0.0,
        eval_groups: dict[str, list[str]] | None = None,
        group_reduce: Literal["max", "mean"] = "max",
        freeze_backbone: bool = False,
    ):
        super().__init__()
        self._init_eval(eval_groups, group_reduce)
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(f"scheduler_interval must be 'step' or 'epoch', not {scheduler_interval!r}")
        self.save_hyperparameters(ignore=["backbone", "criterion", "optimizer", "scheduler"])
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.num_features, num_classes))
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval

    def train(self, mode: bool = True) -> ClassificationModule:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # BatchNorm running statistics stay those of the pretrained encoder
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch[keys.IMAGE])
        loss = self.criterion(logits, batch[keys.LABEL])
        log_train_loss(self, loss, len(logits))  # no device sync between logging steps
        return loss

    # --- evaluation (epoch hooks and metrics: EvalRows) -----------------------------------------
    def _eval_step(self, batch: dict, prefix: str) -> None:
        logits = self(batch[keys.IMAGE])
        self._record(prefix, logits, self.criterion(logits, batch[keys.LABEL]), batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch[keys.IMAGE]).float().softmax(1).cpu()
        out = {"probs": probs, keys.LABEL: batch.get(keys.LABEL)}
        out |= {k: batch[k] for k in META_KEYS if k in batch}
        return out

    # --- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return optimization(self, params, self.optimizer_factory, self.scheduler_factory, self.scheduler_interval)

