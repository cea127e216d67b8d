"""Image/tile classification: an injected backbone and criterion, a linear head, optimiser and LR schedule
from the config, and evaluation rows that the output callbacks (medconv.callbacks) turn into files."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from medconv import keys
from medconv.errors import ConfigError
from medconv.tasks.metrics import REDUCERS, evaluate
from medconv.tasks.schedules import WarmupCosine, optimization

META_KEYS = (keys.IMAGE_ID, keys.PATIENT_ID, keys.EXAM_ID, keys.LATERALITY, keys.VIEW, keys.SLIDE_ID, keys.X, keys.Y)


class ClassificationModule(L.LightningModule):
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
        if group_reduce not in REDUCERS:
            raise ConfigError(f"group_reduce must be one of {sorted(REDUCERS)}, not {group_reduce!r}")
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
        self.eval_groups = dict(eval_groups or {})
        self.group_reduce = group_reduce
        self.eval_rows: dict = {}
        self.eval_metrics: dict[str, float] = {}
        self._outputs: list[dict] = []

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
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        return loss

    # --- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, prefix: str) -> None:
        logits = self(batch[keys.IMAGE])
        loss = self.criterion(logits, batch[keys.LABEL])
        self.log(f"{prefix}/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)
        out = {"probs": logits.float().softmax(1).cpu().numpy(), "labels": batch[keys.LABEL].cpu().numpy()}
        for key in META_KEYS:
            if key in batch:
                value = batch[key]
                out[key] = value.cpu().tolist() if torch.is_tensor(value) else list(value)
        self._outputs.append(out)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_metrics("test")

    def _epoch_metrics(self, prefix: str) -> None:
        """Gather every process's outputs (so groups see whole breasts and slides), compute and log the metrics."""
        self.eval_rows = _dedupe(_gather(_concat(self._outputs)))
        self._outputs = []
        labels = self.eval_rows.get("labels", [])
        self.eval_metrics = evaluate(self.eval_rows, self.eval_groups, self.group_reduce) if len(labels) else {}
        if self.trainer.sanity_checking:
            return
        loggable = {f"{prefix}/{k}": v for k, v in self.eval_metrics.items() if k.split("/")[-1] != "n" and not math.isnan(v)}
        headline = f"{prefix}/auroc"
        self.log_dict({k: v for k, v in loggable.items() if k != headline}, sync_dist=False)
        if headline in loggable:
            self.log(headline, loggable[headline], prog_bar=True, sync_dist=False)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch[keys.IMAGE]).float().softmax(1).cpu()
        out = {"probs": probs, keys.LABEL: batch.get(keys.LABEL)}
        out |= {k: batch[k] for k in META_KEYS if k in batch}
        return out

    # --- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return optimization(self, params, self.optimizer_factory, self.scheduler_factory, self.scheduler_interval)


def _concat(outputs: list[dict]) -> dict[str, np.ndarray | list]:
    if not outputs:
        return {}
    rows: dict[str, np.ndarray | list] = {"probs": np.concatenate([o["probs"] for o in outputs])}
    rows["labels"] = np.concatenate([o["labels"] for o in outputs])
    for key in outputs[0]:
        if key not in rows:
            rows[key] = [v for o in outputs for v in o[key]]
    return rows


def _gather(rows: dict) -> dict:
    """Every rank gets every rank's outputs (DDP), so group metrics see whole breasts and slides."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, rows)
    parts = [p for p in parts if p]
    return _concat(parts) if parts else {}


def _dedupe(rows: dict) -> dict:
    """DistributedSampler pads with repeats; count each image once."""
    ids = rows.get(keys.IMAGE_ID)
    if not ids:
        return rows
    seen: dict = {}
    for i, key in enumerate(zip(ids, rows.get(keys.X, [None] * len(ids)), rows.get(keys.Y, [None] * len(ids)), strict=True)):
        seen.setdefault(key, i)
    index = sorted(seen.values())
    if len(index) == len(ids):
        return rows
    return {k: (v[index] if isinstance(v, np.ndarray) else [v[i] for i in index]) for k, v in rows.items()}
