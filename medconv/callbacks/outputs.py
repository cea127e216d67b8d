"""Every file an evaluation writes, in one place: predictions at the best epoch, test/validate reports with
bootstrap confidence intervals, ROC plots, and the closing summary of a fit.

"Best" is the ModelCheckpoint's monitor and mode, so the predictions, the summary and the ROC plot describe the
checkpoint that `--ckpt_path best` loads.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from medconv.callbacks.files import finite, read_predictions, run_dir, write_predictions
from medconv.callbacks.roc import plot_roc
from medconv.io.atomic import write_json
from medconv.tasks.metrics import CI_METRICS, evaluate

BEST_VAL = "val_predictions_best.csv"


class RunOutputs(L.Callback):
    """Args:
        bootstrap: resamples for the 95% intervals of AUROC/AUPRC in test and validate reports (0: none).
        ci_level: the intervals' coverage.
        seed: the bootstrap's seed (reports are reproducible).
    """

    def __init__(self, bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0):
        self.bootstrap = bootstrap
        self.ci_level = ci_level
        self.seed = seed
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {}

    # --- fit: track the best epoch --------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn != "fit":
            self._report(trainer, pl_module, "val")
            return
        metrics = dict(pl_module.eval_metrics, epoch=float(trainer.current_epoch))
        self.history.append(metrics)
        if _improved(trainer):
            self.best = metrics
            if trainer.is_global_zero:
                write_predictions(pl_module.eval_rows, run_dir(trainer) / BEST_VAL, _classes(trainer))

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = run_dir(trainer)
        preds = out / BEST_VAL
        plots = []
        if preds.is_file():
            png = plot_roc(read_predictions(preds), out / "roc.png", pl_module.eval_groups, pl_module.group_reduce,
                           title=f"Validation ROC (best epoch by {_monitor(trainer)[0] or 'last epoch'})")
            plots += [str(png)] if png else []
        ckpt = trainer.checkpoint_callback
        summary = {
            "run_dir": str(out),
            "config": str(out / "config.yaml"),
            "best_checkpoint": getattr(ckpt, "best_model_path", "") or "",
            "last_checkpoint": getattr(ckpt, "last_model_path", "") or "",
            "monitor": _monitor(trainer)[0],
            "metrics_csv": str(out / "metrics.csv"),
            "tensorboard": str(out),
            "plots": plots,
            "predictions": str(preds) if preds.is_file() else "",
            "best_val": {k: v for k, v in self.best.items() if not (isinstance(v, float) and math.isnan(v))},
        }
        write_json(out / "summary.json", summary)
        lines = ["", "medconv fit finished", f"  run directory   {out}"]
        for label, key in (("config", "config"), ("best checkpoint", "best_checkpoint"), ("last checkpoint", "last_checkpoint"),
                           ("metrics", "metrics_csv"), ("predictions", "predictions")):
            if summary[key]:
                lines.append(f"  {label:<15} {summary[key]}")
        lines += [f"  plot            {p}" for p in plots]
        lines.append(f"  tensorboard     tensorboard --logdir {out}")
        if self.best:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in summary["best_val"].items() if k != "epoch" and k.split("/")[-1] != "n")
            lines.append(f"  best validation (epoch {int(self.best.get('epoch', -1))}): {shown}")
        print("\n".join(lines), flush=True)

    # --- test / validate: a report of their own -------------------------------------------------
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    @rank_zero_only
    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rows = pl_module.eval_rows
        if not rows:
            return
        out = run_dir(trainer)
        metrics = evaluate(rows, pl_module.eval_groups, pl_module.group_reduce, n_boot=self.bootstrap, seed=self.seed)
        preds = write_predictions(rows, out / f"{stage}_predictions.csv", _classes(trainer))
        png = plot_roc(rows, out / f"roc_{stage}.png", pl_module.eval_groups, pl_module.group_reduce, title=f"{stage} ROC")
        report = {
            "checkpoint": str(trainer.ckpt_path or ""),
            "manifest": str(getattr(trainer.datamodule, "manifest", "") or ""),
            "bootstrap": {"resamples": self.bootstrap, "level": self.ci_level, "seed": self.seed, "stratified_by": "label"},
            "metrics": finite(metrics),
        }
        write_json(out / f"{stage}_metrics.json", report)
        lines = ["", f"medconv {'test' if stage == 'test' else 'validate'} finished", f"  output directory  {out}",
                 f"  checkpoint        {report['checkpoint']}", f"  predictions       {preds}", f"  metrics           {out / f'{stage}_metrics.json'}"]
        lines += [f"  plot              {png}"] if png else []
        lines += [f"  {line}" for line in _metric_lines(metrics)]
        print("\n".join(lines), flush=True)

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.best = dict(state_dict.get("best", {}))


def _metric_lines(metrics: dict[str, float]) -> list[str]:
    """`breast auroc 0.912 (95% CI 0.851-0.962), n=120` per level and metric."""
    lines = []
    levels = sorted({k.rsplit("/", 1)[0] if "/" in k else "" for k in metrics}, key=lambda s: (s != "", s))
    for level in levels:
        prefix = f"{level}/" if level else ""
        n = metrics.get(f"{prefix}n")
        for name in ("auroc", "auprc", "sens_at_90spec", "bal_acc"):
            value = metrics.get(prefix + name)
            if value is None or math.isnan(value):
                continue
            ci = ""
            if name in CI_METRICS and f"{prefix}{name}_ci_low" in metrics:
                ci = f" (95% CI {metrics[f'{prefix}{name}_ci_low']:.3f}-{metrics[f'{prefix}{name}_ci_high']:.3f})"
            lines.append(f"{level or 'image':<8} {name:<15} {value:.3f}{ci}, n={int(n or 0)}")
    return lines


def _monitor(trainer: L.Trainer) -> tuple[str | None, str]:
    ckpt = trainer.checkpoint_callback
    return (getattr(ckpt, "monitor", None), getattr(ckpt, "mode", "max")) if ckpt is not None else (None, "max")


def _improved(trainer: L.Trainer) -> bool:
    """Would ModelCheckpoint (which runs after every other callback) keep this epoch as its best?"""
    monitor, mode = _monitor(trainer)
    if monitor is None:
        return True
    current = trainer.callback_metrics.get(monitor)
    if current is None or math.isnan(float(current)):
        return False
    best = getattr(trainer.checkpoint_callback, "best_model_score", None)
    if best is None or math.isnan(float(best)):
        return True
    return float(current) > float(best) if mode == "max" else float(current) < float(best)


def _classes(trainer: L.Trainer) -> list[str] | None:
    try:
        return list(trainer.datamodule.classes)
    except Exception:  # noqa: BLE001 -- class names are a convenience column only
        return None
