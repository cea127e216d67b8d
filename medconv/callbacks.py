"""Callbacks every run gets: the ROC plot and a closing summary of where everything was written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only


def run_dir(trainer: L.Trainer) -> Path:
    """The run directory, read from the first logger: `trainer.log_dir` is a collective under DDP and
    would hang when called on rank 0 alone."""
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


def plot_roc(predictions_csv: Path, out_png: Path, groups: dict[str, list[str]] | None = None) -> Path | None:
    """ROC curves of a predictions CSV (binary tasks): per image and per group, with AUROC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    table = pd.read_csv(predictions_csv)
    if "prob_1" not in table.columns or table["label_index"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 5))
    curves = {"image": table}
    for name, columns in (groups or {}).items():
        if all(c in table.columns for c in columns):
            curves[name] = table.groupby(columns, dropna=False).agg(prob_1=("prob_1", "max"), label_index=("label_index", "max"))
    for name, t in curves.items():
        if t["label_index"].nunique() < 2:
            continue
        scores = torch.tensor(t["prob_1"].to_numpy(dtype="float32", copy=True))
        target = torch.tensor(t["label_index"].to_numpy(dtype="int64", copy=True))
        fpr, tpr, _ = binary_roc(scores, target)
        auroc = float(binary_auroc(scores, target))
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{name} (AUROC {auroc:.3f}, n={len(t)})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Validation ROC (best epoch)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


class RunSummary(L.Callback):
    """At the end of `fit`: ROC plot of the best epoch, summary.json, and a printed list of the outputs."""

    def __init__(self, monitor: str = "auroc"):
        self.monitor = monitor

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = run_dir(trainer)
        history = getattr(pl_module, "val_history", [])
        best = max(history, key=lambda h: _score(h.get(self.monitor))) if history else {}
        plots = []
        preds = log_dir / "val_predictions_best.csv"
        if preds.exists():
            png = plot_roc(preds, log_dir / "roc.png", getattr(pl_module, "eval_groups", None))
            plots += [str(png)] if png else []
        ckpt = trainer.checkpoint_callback
        summary = {
            "run_dir": str(log_dir),
            "config": str(log_dir / "config.yaml"),
            "best_checkpoint": getattr(ckpt, "best_model_path", "") or "",
            "last_checkpoint": getattr(ckpt, "last_model_path", "") or "",
            "metrics_csv": str(log_dir / "metrics.csv"),
            "tensorboard": str(log_dir),
            "plots": plots,
            "predictions": str(preds) if preds.exists() else "",
            "best_val": {k: v for k, v in best.items() if not (isinstance(v, float) and math.isnan(v))},
        }
        (log_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        lines = ["", "medconv fit finished", f"  run directory   {log_dir}"]
        for label, key in (("config", "config"), ("best checkpoint", "best_checkpoint"), ("last checkpoint", "last_checkpoint"), ("metrics", "metrics_csv"), ("predictions", "predictions")):
            lines.append(f"  {label:<15} {summary[key]}")
        lines += [f"  plot            {p}" for p in plots]
        lines.append(f"  tensorboard     tensorboard --logdir {log_dir}")
        if best:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in summary["best_val"].items() if k != "epoch" and not k.endswith("/n") and k != "n")
            lines.append(f"  best validation (epoch {int(best.get('epoch', -1))}): {shown}")
        print("\n".join(lines), flush=True)


def _score(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


class PredictionCSVWriter(BasePredictionWriter):
    """`medconv predict` output: one CSV of per-sample probabilities with their ids (per rank under DDP)."""

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:  # type: ignore[override]
        from medconv.tasks.classification import write_predictions

        rows: dict = {}
        for batch in predictions:
            for key, value in batch.items():
                if value is None:
                    continue
                value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
                rows.setdefault(key, []).append(value)
        rows = {k: np.concatenate(v) for k, v in rows.items()}
        if "label" in rows:
            rows["labels"] = rows.pop("label")
        out_dir = Path(self.output_dir) if self.output_dir else run_dir(trainer)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        write_predictions(rows, out_dir / name)
        print(f"medconv: predictions written to {out_dir / name}")
