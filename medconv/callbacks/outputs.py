"""Every file an evaluation writes, in one place: predictions at the best epoch, test/validate reports with
patient-bootstrap confidence intervals, calibration and subgroup metrics, ROC and reliability plots, and the
closing summary of a fit.

"Best" is the ModelCheckpoint's monitor and mode, so the predictions, the summary and the ROC plot describe the
checkpoint that `--ckpt_path best` loads.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from medconv.callbacks.calibration import plot_reliability
from medconv.callbacks.files import finite, read_predictions, run_dir, write_predictions
from medconv.callbacks.roc import plot_roc
from medconv.callbacks.subgroups import check_columns, with_columns
from medconv.io.atomic import write_json
from medconv.tasks.metrics import CI_METRICS, evaluate_report
from medconv.tasks.subgroups import MIN_PER_CLASS, subgroup_metrics

BEST_VAL = "val_predictions_best.csv"


class RunOutputs(L.Callback):
    """Args:
        bootstrap: resamples for the intervals of AUROC/AUPRC in test and validate reports (0: none); patients are
            resampled (all images of a drawn patient), images only when the rows carry no patient id.
        ci_level: the intervals' coverage.
        seed: the bootstrap's seed (reports are reproducible).
        subgroups: manifest columns (e.g. `[density, site]`) whose values each get their own metrics and intervals
            in the report; subgroups with fewer than 5 images of a class get no interval, and a note.
    """

    def __init__(self, bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0, subgroups: list[str] | None = None):
        self.bootstrap = bootstrap
        self.ci_level = ci_level
        self.seed = seed
        self.subgroups = list(subgroups or [])
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
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage in ("test", "validate"):  # a missing subgroup column is refused before any image is evaluated
            check_columns(trainer.datamodule, "test" if stage == "test" else "val", self.subgroups)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    @rank_zero_only
    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rows = pl_module.eval_rows
        if not rows:
            return
        out = run_dir(trainer)
        rows, unmatched = with_columns(rows, trainer.datamodule, stage, self.subgroups)
        result = evaluate_report(rows, pl_module.eval_groups, pl_module.group_reduce, n_boot=self.bootstrap, seed=self.seed,
                                 level=self.ci_level)
        subgroups = {c: subgroup_metrics(rows, c, self.bootstrap, self.seed, self.ci_level) for c in self.subgroups if c in rows}
        preds = write_predictions(rows, out / f"{stage}_predictions.csv", _classes(trainer))
        png = plot_roc(rows, out / f"roc_{stage}.png", pl_module.eval_groups, pl_module.group_reduce, title=f"{stage} ROC")
        reliability = plot_reliability(rows, out / f"reliability_{stage}.png", title=f"{stage} calibration")
        image = next(iter(result.bootstrap.values()), {})  # the rows' level (image, or sample for patches)
        report = {
            "checkpoint": str(trainer.ckpt_path or ""),
            "manifest": str(getattr(trainer.datamodule, "manifest", "") or ""),
            "bootstrap": {"resamples": self.bootstrap, "level": self.ci_level, "seed": self.seed,
                          "resampled": image.get("resampled"),
                          "stratified_by": "each resampled unit's highest label", "interval": "percentile",
                          "levels": result.bootstrap},
            "calibration": {"ece": "10 equal-width bins of the positive-class probability (top label for more classes)",
                            "ece_adaptive": "10 equal-count bins", "brier": "mean squared error of that probability"},
            "metrics": finite(result.metrics),
        }
        if self.subgroups:
            report["subgroups"] = {c: {v: finite(m) for v, m in groups.items()} for c, groups in subgroups.items()}
            report["subgroups_min_per_class"] = MIN_PER_CLASS
            if unmatched:
                report["subgroups_unmatched"] = unmatched
        write_json(out / f"{stage}_metrics.json", report)
        lines = ["", f"medconv {'test' if stage == 'test' else 'validate'} finished", f"  output directory  {out}",
                 f"  checkpoint        {report['checkpoint']}", f"  predictions       {preds}", f"  metrics           {out / f'{stage}_metrics.json'}"]
        lines += [f"  plot              {p}" for p in (png, reliability) if p]
        if image:
            lines.append(f"  intervals         {self.ci_level:.0%} percentile bootstrap over {image['clusters']} {image['resampled']}, "
                         f"{image['resamples']} resamples ({image['degenerate']} redrawn: a class missing)")
        lines += [f"  {line}" for line in _metric_lines(result.metrics, self.ci_level)]
        lines += [f"  {line}" for line in _subgroup_lines(subgroups, self.ci_level)]
        lines += [f"  subgroups {', '.join(unmatched)}: no manifest row matched the predictions; not reported"] if unmatched else []
        print("\n".join(lines), flush=True)

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.best = dict(state_dict.get("best", {}))


def _ci_text(metrics: dict, key: str, level: float) -> str:
    if f"{key}_ci_low" not in metrics:
        return ""
    return f" ({level:.0%} CI {metrics[f'{key}_ci_low']:.3f}-{metrics[f'{key}_ci_high']:.3f})"


def _metric_lines(metrics: dict[str, float], level: float = 0.95) -> list[str]:
    """`breast auroc 0.912 (95% CI 0.851-0.962), n=120` per level and metric."""
    lines = []
    levels = sorted({k.rsplit("/", 1)[0] if "/" in k else "" for k in metrics}, key=lambda s: (s != "", s))
    for level_name in levels:
        prefix = f"{level_name}/" if level_name else ""
        n = metrics.get(f"{prefix}n")
        for name in ("auroc", "auprc", "sens_at_90spec", "bal_acc", "ece", "brier"):
            value = metrics.get(prefix + name)
            if value is None or math.isnan(value):
                continue
            ci = _ci_text(metrics, prefix + name, level) if name in CI_METRICS else ""
            lines.append(f"{level_name or 'image':<8} {name:<15} {value:.3f}{ci}, n={int(n or 0)}")
    return lines


def _subgroup_lines(subgroups: dict[str, dict[str, dict]], level: float) -> list[str]:
    """`density=B   auroc 0.801 (95% CI 0.702-0.884), n=60, 12 positive` per subgroup."""
    lines = []
    for column, groups in subgroups.items():
        for value, m in groups.items():
            auroc = m.get("auroc")
            shown = f"auroc {auroc:.3f}{_ci_text(m, 'auroc', level)}" if auroc is not None else "auroc n/a"
            positives = f", {m['positives']} positive" if m.get("positives") is not None else ""
            note = f" [{m['note']}]" if m.get("note") else ""
            lines.append(f"{column}={value:<6} {shown}, n={m['n']}{positives}{note}")
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
