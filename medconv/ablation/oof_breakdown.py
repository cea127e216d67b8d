"""Beyond the pooled AUROC of a k-fold sweep: each arm's calibration on its out-of-fold predictions, and its AUROC
per subgroup (a manifest column such as `density`, `site` or `scanner`), each with a patient-bootstrap interval.

Both read the predictions table of `medconv.ablation.oof` (one row per arm, seed and image). Subgroup values come
from the runs' own `test_predictions.csv` when `RunOutputs(subgroups=[...])` wrote them there, or else from the
manifest: its `image_path`, resolved against the manifest's folder, is matched to the predictions' `image_id`
(the path the run read, resolved against the folder the report runs in), or to the file name when that is unique.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medconv import keys
from medconv.callbacks.calibration import plot_reliability
from medconv.errors import InputFileError
from medconv.stats.calibration import calibration_metrics
from medconv.tasks.subgroups import subgroup_metrics


def _rows(part: pd.DataFrame) -> dict:
    prob = part["prob"].to_numpy(float)
    return {"probs": np.stack([1 - prob, prob], axis=1), "labels": part["label"].to_numpy(int),
            keys.PATIENT_ID: part["patient_id"].astype(str).tolist()}


def pooled_calibration(df: pd.DataFrame, n_bins: int = 10, plots: Path | None = None) -> pd.DataFrame:
    """One row per arm and seed: `ece` (equal-width bins), `ece_adaptive`, `brier` of the pooled out-of-fold
    probabilities; with `plots`, a reliability diagram per arm and seed is written there."""
    out = []
    for (arm, seed), part in df.groupby(["arm", "seed"], sort=True):
        rows = _rows(part)
        out.append({"arm": arm, "seed": seed, "n": len(part), **calibration_metrics(rows["probs"], rows["labels"], n_bins)})
        if plots is not None:
            name = f"reliability_{str(arm).replace('/', '_')}_s{seed}.png"
            plot_reliability(rows, plots / name, title=f"{arm} seed {seed}, out-of-fold", n_bins=n_bins)
    return pd.DataFrame(out, columns=["arm", "seed", "n", "ece", "ece_adaptive", "brier"])


def manifest_column(df: pd.DataFrame, manifest: Path, column: str, base: Path | None = None) -> pd.Series:
    """`column` of the manifest row of each prediction (aligned with `df`); refuses unmatched images by name."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if column not in table.columns:
        raise InputFileError(f"{manifest} has no column {column!r} (it has {list(table.columns)}); name one of those")
    by_path = {str((manifest.parent / p).resolve()): v for p, v in zip(table["image_path"], table[column], strict=True)}
    names = pd.Series([Path(p).name for p in table["image_path"]])
    unique = names[~names.duplicated(keep=False)]
    by_name = dict(zip(unique, table.loc[unique.index, column], strict=True))
    base = base or Path.cwd()
    values = [by_path.get(str((base / i).resolve()), by_name.get(Path(i).name)) for i in df["image_id"].astype(str)]
    missing = sorted({i for i, v in zip(df["image_id"], values, strict=True) if v is None})
    if missing:
        raise InputFileError(f"{len(missing)} predicted image(s) are not in {manifest} (e.g. {missing[0]}); give the "
                             "manifest the runs were trained on, and run the report from the folder the sweep ran in")
    return pd.Series(values, index=df.index, name=column)


def pooled_subgroups(df: pd.DataFrame, values: pd.Series, n_boot: int = 2000, level: float = 0.95,
                     rng_seed: int = 0) -> pd.DataFrame:
    """One row per arm, seed and value of `values` (aligned with `df`): n, patients, positives, AUROC and its
    patient-bootstrap interval (none, with a note, for a group with fewer than 5 images of a class)."""
    out = []
    column = values.name or "subgroup"
    for (arm, seed), part in df.groupby(["arm", "seed"], sort=True):
        rows = _rows(part) | {column: values.loc[part.index].astype(str).tolist()}
        for value, m in subgroup_metrics(rows, column, n_boot=n_boot, seed=rng_seed, level=level).items():
            out.append({"arm": arm, "seed": seed, column: value, "n": m["n"], "patients": m["patients"],
                        "positives": m["positives"], "auroc": m.get("auroc"), "ci_low": m.get("auroc_ci_low"),
                        "ci_high": m.get("auroc_ci_high"), "note": m.get("note", "")})
    return pd.DataFrame(out, columns=["arm", "seed", column, "n", "patients", "positives", "auroc", "ci_low", "ci_high", "note"])


def subgroup_tables(df: pd.DataFrame, columns: Sequence[str], manifest: Path | None, n_boot: int = 2000) -> dict[str, pd.DataFrame]:
    """`oof_by_<column>` per column: from the predictions' own column when the runs wrote it, else the manifest."""
    tables = {}
    for column in columns:
        if column in df.columns:
            values = df[column].astype(str).rename(column)
        elif manifest is not None:
            values = manifest_column(df, Path(manifest), column)
        else:
            raise InputFileError(f"the runs' predictions have no {column!r} column: give --manifest, the manifest they "
                                 "were trained on, to read it from")
        tables[f"oof_by_{column}"] = pooled_subgroups(df, values, n_boot)
    return tables
