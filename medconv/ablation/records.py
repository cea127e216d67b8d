"""Result records: one JSON file per run (`<out>/records/<run_id>.json`), written atomically when the run ends.

A record that exists and parses is the proof a run finished, so resuming a sweep is "skip what has an `ok`
record". A record that does not parse is moved aside (never silently overwritten) and its run is done again.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

RECORDS = "records"
PRETRAIN = "pretrain"  # pretraining records live in records/pretrain/, apart from the fine-tunes a report reads
STATUSES = ("ok", "failed")
# The columns a report groups and pairs by; every record has them.
ARM_COLUMNS = ["backbone", "family", "init", "init_kind", "fraction", "seed"]


def record_path(out: Path, run_id: str, pretraining: bool = False) -> Path:
    folder = Path(out) / RECORDS
    return (folder / PRETRAIN if pretraining else folder) / f"{run_id}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """The record, or None when it is missing; raises ValueError when it exists but is not a complete record."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(record, dict) or record.get("status") not in STATUSES or record.get("run_id") != path.stem:
        raise ValueError(f"{path}: not a result record (needs run_id {path.stem!r} and status ok|failed)")
    return record


def state(path: Path) -> str:
    """missing | corrupt | failed | ok."""
    try:
        record = read_record(path)
    except ValueError:
        return "corrupt"
    return "missing" if record is None else record["status"]


def set_aside(path: Path) -> Path:
    """Rename a corrupt record to `<name>.json.corrupt-<time>` (kept for inspection, no longer read) and warn."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(target)
    warnings.warn(f"{path}: corrupt result record moved to {target.name}; its run is done again", stacklevel=2)
    return target


def records_dir(path: str | Path) -> Path:
    """`DIR/records` for a sweep's output folder, or DIR itself when it holds the records."""
    path = Path(path)
    return path / RECORDS if (path / RECORDS).is_dir() else path


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Every fine-tune record under a sweep's output (or records) folder; corrupt ones are skipped with a warning."""
    folder = records_dir(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no records folder; run `medconv ablate --config SWEEP --out {path}` first")
    out = []
    for file in sorted(folder.glob("*.json")):
        try:
            out.append(read_record(file))
        except ValueError as err:
            warnings.warn(str(err), stacklevel=2)
    return out


def records_table(records: list[dict[str, Any]], metric: str = "auroc") -> pd.DataFrame:
    """One row per finished (`ok`) run: its arm, `test_<metric>` (+ its bootstrap CI), `val_<metric>`, cost columns."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        test, val = r.get("test") or {}, r.get("val") or {}
        row = {k: r.get(k) for k in ["run_id", *ARM_COLUMNS]}
        row |= {f"test_{metric}": _num(test.get(metric)), f"test_{metric}_ci_low": _num(test.get(f"{metric}_ci_low")),
                f"test_{metric}_ci_high": _num(test.get(f"{metric}_ci_high")), f"val_{metric}": _num(val.get(f"val/{metric}", val.get(metric))),
                "best_epoch": r.get("best_epoch"), "wall_s": _num(r.get("wall_s")), "peak_rss_mb": _num(r.get("peak_rss_mb")),
                "cuda_peak_mb": _num(r.get("cuda_peak_mb")), "train_images_per_s": _num(r.get("train_images_per_s"))}
        rows.append(row)
    columns = ["run_id", *ARM_COLUMNS, f"test_{metric}", f"val_{metric}"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
