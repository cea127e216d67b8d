"""Evaluation rows shared by the supervised tasks (classification, MIL): per-sample probabilities with their ids,
gathered over processes and scored once per epoch, so the output callbacks (medconv.callbacks) read every task
the same way (`eval_rows`, `eval_metrics`, `eval_groups`, `group_reduce`)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from medconv import keys
from medconv.errors import ConfigError
from medconv.tasks.metrics import REDUCERS, evaluate

META_KEYS = (keys.IMAGE_ID, keys.PATIENT_ID, keys.EXAM_ID, keys.LATERALITY, keys.VIEW, keys.SLIDE_ID, keys.X, keys.Y)


class EvalRows:
    """Mixin for a LightningModule (list it before `L.LightningModule`): call `_init_eval` in `__init__` and define
    `_eval_step(batch, prefix)`, which calls `_record(prefix, logits, loss, batch)`; the steps and epoch hooks do the rest."""

    def _init_eval(self, eval_groups: dict[str, list[str]] | None, group_reduce: str) -> None:
        if group_reduce not in REDUCERS:
            raise ConfigError(f"group_reduce must be one of {sorted(REDUCERS)}, not {group_reduce!r}")
        self.eval_groups = dict(eval_groups or {})
        self.group_reduce = group_reduce
        self.eval_rows: dict = {}
        self.eval_metrics: dict[str, float] = {}
        self._outputs: list[dict] = []

    def _record(self, prefix: str, logits: torch.Tensor, loss: torch.Tensor, batch: dict) -> None:
        self.log(f"{prefix}/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)
        out = {"probs": logits.float().softmax(1).cpu().numpy(), "labels": batch[keys.LABEL].cpu().numpy()}
        for key in META_KEYS:
            if key in batch:
                value = batch[key]
                out[key] = value.cpu().tolist() if torch.is_tensor(value) else list(value)
        self._outputs.append(out)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")  # the task's forward + `_record`

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_metrics("test")

    def _epoch_metrics(self, prefix: str) -> None:
        """Gather every process's outputs (so groups see whole breasts and slides), compute and log the metrics."""
        self.eval_rows = dedupe_rows(gather_rows(concat_rows(self._outputs)))
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


def concat_rows(outputs: list[dict]) -> dict[str, np.ndarray | list]:
    if not outputs:
        return {}
    rows: dict[str, np.ndarray | list] = {"probs": np.concatenate([o["probs"] for o in outputs])}
    rows["labels"] = np.concatenate([o["labels"] for o in outputs])
    for key in outputs[0]:
        if key not in rows:
            rows[key] = [v for o in outputs for v in o[key]]
    return rows


def gather_rows(rows: dict) -> dict:
    """Every rank gets every rank's outputs (DDP), so group metrics see whole breasts and slides."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, rows)
    parts = [p for p in parts if p]
    return concat_rows(parts) if parts else {}


def dedupe_rows(rows: dict) -> dict:
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
