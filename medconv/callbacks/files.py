"""Where a run's files go and how predictions tables are written and read back."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

from medconv.io.atomic import atomic_path


def run_dir(trainer: L.Trainer) -> Path:
    """The run (or evaluation) directory, read from the first logger: `trainer.log_dir` is a collective under DDP
    and would hang when called on rank 0 alone."""
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


def write_predictions(rows: dict, path: Path, classes: list[str] | None = None) -> Path | None:
    """CSV of per-sample probabilities with ids (`prob_<i>`, `label_index`, and class names when known)."""
    if not rows or "probs" not in rows:
        return None
    probs = np.asarray(rows["probs"])
    table = pd.DataFrame({k: v for k, v in rows.items() if k != "probs"}).rename(columns={"labels": "label_index"})
    for c in range(probs.shape[1]):
        table[f"prob_{c}"] = probs[:, c]
    if classes and len(classes) == probs.shape[1]:
        table["pred"] = [classes[i] for i in probs.argmax(1)]
        if "label_index" in table.columns and table["label_index"].notna().all():
            table["label"] = [classes[int(i)] for i in table["label_index"]]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def read_predictions(path: Path) -> dict:
    """A predictions CSV back into evaluation rows (`probs`, `labels`, id columns)."""
    table = pd.read_csv(path)
    prob_columns = sorted((c for c in table.columns if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
    rows: dict = {"probs": table[prob_columns].to_numpy(np.float64), "labels": table["label_index"].to_numpy(np.int64)}
    for column in table.columns:
        if column not in prob_columns and column not in ("label_index", "label", "pred"):
            rows[column] = table[column].tolist()
    return rows


def finite(metrics: dict) -> dict:
    """JSON-safe: NaN (a single-class set) becomes null rather than an invalid JSON token."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


