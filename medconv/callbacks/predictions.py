"""`medconv predict` output: per-sample probabilities with their ids, one CSV (per process under DDP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from medconv.callbacks.files import run_dir, write_predictions


class PredictionCSVWriter(BasePredictionWriter):
    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:  # type: ignore[override]
        columns: dict = {}
        for batch in predictions:
            for key, value in batch.items():
                if value is not None:
                    columns.setdefault(key, []).append(value.numpy() if hasattr(value, "numpy") else np.asarray(value))
        rows = {k: np.concatenate(v) for k, v in columns.items()}
        if "label" in rows:
            rows["labels"] = rows.pop("label")
        out_dir = Path(self.output_dir) if self.output_dir else run_dir(trainer)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        classes = getattr(trainer.datamodule, "classes", None) if trainer.datamodule is not None else None
        write_predictions(rows, out_dir / name, classes)
        print(f"medconv: predictions written to {out_dir / name}")
