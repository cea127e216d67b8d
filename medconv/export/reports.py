"""The evaluation a model card may quote: `medconv test` reports of the exported checkpoint, and the run's best
validation epoch when that is the checkpoint exported.

`medconv test` writes `<run>/eval/test-<time>/test_metrics.json` (metrics with bootstrap 95% intervals, the
checkpoint it loaded, the manifest it tested on). A report counts when it tested this checkpoint file; one per
manifest is kept, the newest. A lone checkpoint has no run folder beside it, hence no reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medconv.run_dirs import EVAL_DIR

#: metrics a card shows per level (image, breast, exam, slide), with their intervals where the report has them
CARD_METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("bal_acc", "balanced accuracy"), ("sens_at_90spec", "sensitivity at 90% specificity"))


@dataclass
class TestReport:
    path: Path
    manifest: str  # "" when the run's own data (its held-out split, or the demo set) was tested
    metrics: dict[str, float | None]
    bootstrap: dict[str, Any] = field(default_factory=dict)


def run_folder(checkpoint: Path) -> Path | None:
    """`<run>` of `<run>/checkpoints/x.ckpt`; None for a checkpoint elsewhere."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def test_reports(checkpoint: Path) -> list[TestReport]:
    """Reports of `medconv test` on this checkpoint, newest first, one per tested manifest."""
    run = run_folder(checkpoint)
    if run is None:
        return []
    found: dict[str, TestReport] = {}
    paths = sorted((run / EVAL_DIR).glob("test-*/test_metrics.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable report is not evidence
        tested = Path(str(report.get("checkpoint") or "")).name
        manifest = str(report.get("manifest") or "")
        if tested == checkpoint.name and manifest not in found and report.get("metrics"):
            found[manifest] = TestReport(path, manifest, dict(report["metrics"]), dict(report.get("bootstrap") or {}))
    return list(found.values())


def best_validation(checkpoint: Path) -> dict[str, float]:
    """The run summary's best validation metrics, when the exported checkpoint is that best one."""
    run = run_folder(checkpoint)
    summary = run / "summary.json" if run else None
    if summary is None or not summary.is_file():
        return {}
    try:
        data = json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if Path(str(data.get("best_checkpoint") or "")).name != checkpoint.name:
        return {}
    return {k: v for k, v in (data.get("best_val") or {}).items() if isinstance(v, int | float)}


def metric_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Table rows (level, n, metric with 95% CI, ...) from a report's flat `level/metric` keys."""
    levels = sorted({k.rsplit("/", 1)[0] if "/" in k else "" for k in metrics}, key=lambda s: (s != "", s))
    rows = []
    for level in levels:
        prefix = f"{level}/" if level else ""
        cells = [_value(metrics, prefix + name) for name, _ in CARD_METRICS]
        if all(c == "–" for c in cells):
            continue
        n = metrics.get(f"{prefix}n")
        rows.append([level or "image", str(int(n)) if isinstance(n, int | float) else "–", *cells])
    return rows


def _value(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if not isinstance(value, int | float):
        return "–"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return f"{value:.3f} ({low:.3f}–{high:.3f})"
    return f"{value:.3f}"
