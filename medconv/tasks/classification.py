"""Image/tile classification: an injected backbone, a linear head, AdamW + warmup/cosine, rich evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from medconv import keys
from medconv.callbacks import run_dir
from medconv.tasks.losses import make_loss
from medconv.tasks.metrics import aggregate_groups, classification_metrics

META_KEYS = (keys.IMAGE_ID, keys.PATIENT_ID, keys.EXAM_ID, keys.LATERALITY, keys.VIEW, keys.SLIDE_ID, keys.X, keys.Y)


class ClassificationModule(L.LightningModule):
    """Metrics per image and per group: `eval_groups={"breast": ["exam_id", "laterality"]}` scores a breast by
    the max over its views; `{"slide": ["slide_id"]}` scores a slide by its tiles.

    The backbone is an `nn.Module` returning pooled features with a `num_features` attribute
    (`medconv.models.TimmBackbone`); `num_classes` is linked from the data by the CLI.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        loss: str = "ce",
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        head_dropout: float = 0.0,
        eval_groups: dict[str, list[str]] | None = None,
        group_reduce: str = "max",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.num_features, num_classes))
        self.criterion = make_loss(loss, class_weights, label_smoothing, focal_gamma)
        self.optimizer_factory = optimizer
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio
        self.eval_groups = dict(eval_groups or {})
        self.group_reduce = group_reduce
        self.val_history: list[dict[str, float]] = []
        self._outputs: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch[keys.IMAGE])
        loss = self.criterion(logits, batch[keys.LABEL])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        return loss

    # --- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict) -> torch.Tensor:
        logits = self(batch[keys.IMAGE])
        loss = self.criterion(logits, batch[keys.LABEL])
        out = {"probs": logits.float().softmax(1).cpu().numpy(), "labels": batch[keys.LABEL].cpu().numpy()}
        for key in META_KEYS:
            if key in batch:
                value = batch[key]
                out[key] = value.cpu().tolist() if torch.is_tensor(value) else list(value)
        self._outputs.append(out)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._eval_step(batch)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch[keys.LABEL]), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._eval_step(batch)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(batch[keys.LABEL]), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:

        rows, metrics = self._epoch_metrics("val")
        if self.trainer.sanity_checking:
            return
        metrics["epoch"] = float(self.current_epoch)
        improved = not self.val_history or _better(metrics.get("auroc"), max(h.get("auroc", -1) for h in self.val_history))
        self.val_history.append(metrics)
        if improved and self.trainer.is_global_zero:
            write_predictions(rows, run_dir(self.trainer) / "val_predictions_best.csv")

    def on_test_epoch_end(self) -> None:
        rows, _ = self._epoch_metrics("test")
        if self.trainer.is_global_zero:
            write_predictions(rows, run_dir(self.trainer) / "test_predictions.csv")

    def _epoch_metrics(self, prefix: str) -> tuple[dict[str, np.ndarray | list], dict[str, float]]:
        rows = _dedupe(_gather(_concat(self._outputs)))
        self._outputs = []
        if not len(rows.get("labels", [])):
            return rows, {}
        metrics = {f"{k}": v for k, v in classification_metrics(rows["probs"], rows["labels"]).items()}
        for group, columns in self.eval_groups.items():
            if all(c in rows for c in columns):
                g_keys = list(zip(*(rows[c] for c in columns)))
                _, g_probs, g_labels = aggregate_groups(g_keys, rows["probs"], rows["labels"], self.group_reduce)
                metrics |= {f"{group}/{k}": v for k, v in classification_metrics(g_probs, g_labels).items()}
        if not self.trainer.sanity_checking:
            loggable = {f"{prefix}/{k}": v for k, v in metrics.items() if k.split("/")[-1] != "n" and not math.isnan(v)}
            headline = f"{prefix}/auroc"
            self.log_dict({k: v for k, v in loggable.items() if k != headline}, sync_dist=False)
            if headline in loggable:
                self.log(headline, loggable[headline], prog_bar=True, sync_dist=False)
        return rows, metrics

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch[keys.IMAGE]).float().softmax(1).cpu()
        out = {"probs": probs, keys.LABEL: batch.get(keys.LABEL)}
        out |= {k: batch[k] for k in META_KEYS if k in batch}
        return out

    # --- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(int(self.warmup_epochs * per_epoch), total - 1)
        floor = self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return floor + (1 - floor) * (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["medconv_val_history"] = self.val_history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_history = list(checkpoint.get("medconv_val_history", []))


def _better(new: float | None, old: float) -> bool:
    return new is not None and not math.isnan(new) and new > old


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
    for i, key in enumerate(zip(ids, rows.get(keys.X, [None] * len(ids)), rows.get(keys.Y, [None] * len(ids)))):
        seen.setdefault(key, i)
    index = sorted(seen.values())
    if len(index) == len(ids):
        return rows
    return {k: (v[index] if isinstance(v, np.ndarray) else [v[i] for i in index]) for k, v in rows.items()}


def write_predictions(rows: dict, path: Path) -> None:
    """CSV of per-sample probabilities with ids, written atomically."""
    import pandas as pd

    if not rows:
        return
    table = pd.DataFrame({k: v for k, v in rows.items() if k not in ("probs",)})
    for c in range(rows["probs"].shape[1]):
        table[f"prob_{c}"] = rows["probs"][:, c]
    table = table.rename(columns={"labels": "label_index"})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
