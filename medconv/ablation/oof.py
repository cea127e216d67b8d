"""Pooled out-of-fold (OOF) predictions of a k-fold sweep: every image scored once per arm and seed, by the fold
model that never saw its patient, so each arm is measured on the whole (small) set rather than on one fold's
fifth of it, and two arms are compared on exactly the same images.

Pooling assumes the k fold models put their probabilities on a comparable scale (same recipe, same steps): the
AUROC of the pooled set ranks images of one fold against images of another. Intervals resample patients (all
their images), and two arms are compared paired: DeLong's test on the images and a paired patient bootstrap (the
same resampled patients score both arms).

A predictions table has one row per (run, image): `arm`, `fold`, `seed`, `image_id`, `patient_id`, `label` (0/1)
and `prob` (the positive class's probability); `oof_predictions` builds it from a sweep's records. `rng_seed` is the
bootstrap's random seed (fixed: reports are reproducible), not a run's `seed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medconv.stats.compare import auroc_with_ci, compare_aurocs

COLUMNS = ("arm", "fold", "seed", "image_id", "patient_id", "label", "prob")
ARM_KEYS = ("backbone", "init", "fraction")  # what names an arm in a sweep's records (fold and seed vary within it)


def check_predictions(df: pd.DataFrame) -> None:
    """Raise ValueError when a column is missing, or an image is out-of-fold twice for one arm and seed (its
    patient was in two folds' test sets), or one image has two labels."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"predictions table lacks column(s) {missing}; it needs {list(COLUMNS)}")
    twice = df[df.duplicated(["arm", "seed", "image_id"], keep=False)]
    if len(twice):
        row = twice.iloc[0]
        folds = sorted(twice.loc[(twice["arm"] == row["arm"]) & (twice["seed"] == row["seed"]) & (twice["image_id"] == row["image_id"]), "fold"])
        raise ValueError(f"image {row['image_id']!r} is out-of-fold more than once for arm {row['arm']!r}, seed {row['seed']} "
                         f"(folds {folds}): the folds' test sets overlap")
    labels = df.groupby("image_id")["label"].nunique()
    if (labels > 1).any():
        raise ValueError(f"image {labels[labels > 1].index[0]!r} has different labels in different runs")


def pooled_oof(df: pd.DataFrame, n_boot: int = 2000, level: float = 0.95, rng_seed: int = 0) -> pd.DataFrame:
    """One row per arm and seed: the pooled OOF AUROC with its patient-bootstrap percentile interval (`ci_low`,
    `ci_high`), `folds` pooled, `n` images, `patients`, `positives`, `coverage` (share of all the table's images
    this arm and seed scored: 1.0 when every fold finished), and what the bootstrap resampled."""
    check_predictions(df)
    everything = df["image_id"].nunique()
    rows = []
    for (arm, run_seed), part in df.groupby(["arm", "seed"], sort=True):
        stats = auroc_with_ci(part["prob"].to_numpy(float), part["label"].to_numpy(int), part["patient_id"].astype(str).tolist(),
                              n_boot, level, rng_seed)
        rows.append({"arm": arm, "seed": run_seed, "folds": part["fold"].nunique(), "patients": part["patient_id"].nunique(),
                     "coverage": len(part) / everything, **stats})
    columns = ["arm", "seed", "folds", "n", "patients", "positives", "coverage", "auroc", "ci_low", "ci_high", "resampled",
               "clusters", "resamples", "degenerate"]
    return pd.DataFrame(rows).reindex(columns=columns)


def paired_arms(df: pd.DataFrame, a: str, b: str, n_boot: int = 2000, level: float = 0.95, rng_seed: int = 0) -> pd.DataFrame:
    """Arm `a` minus arm `b`, per seed both have, on the images both scored out-of-fold: AUROCs, `diff`, DeLong
    (`delong_se`, `delong_ci_low/high`, `delong_z`, `delong_p`) and the paired patient bootstrap (`boot_ci_low/high`,
    `boot_p`)."""
    check_predictions(df)
    rows = []
    for run_seed in sorted(set(df.loc[df["arm"] == a, "seed"]) & set(df.loc[df["arm"] == b, "seed"])):
        left = df[(df["arm"] == a) & (df["seed"] == run_seed)].set_index("image_id")
        right = df[(df["arm"] == b) & (df["seed"] == run_seed)].set_index("image_id")
        shared = left.index.intersection(right.index).sort_values()
        if len(shared) == 0:
            continue
        left, right = left.loc[shared], right.loc[shared]
        stats = compare_aurocs(left["prob"].to_numpy(float), right["prob"].to_numpy(float), left["label"].to_numpy(int),
                               left["patient_id"].astype(str).tolist(), n_boot, level, rng_seed)
        rows.append({"a": a, "b": b, "seed": run_seed, "patients": left["patient_id"].nunique(), **stats})
    columns = ["a", "b", "seed", "n", "patients", "positives", "auroc_a", "auroc_b", "diff", "delong_se", "delong_ci_low",
               "delong_ci_high", "delong_z", "delong_p", "boot_ci_low", "boot_ci_high", "boot_p", "resampled", "clusters",
               "resamples", "degenerate"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _newest_predictions(run_dir: str | Path) -> Path | None:
    files = sorted(Path(run_dir).glob("eval/test-*/test_predictions.csv"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def oof_predictions(records: Sequence[dict], arm_keys: Sequence[str] = ARM_KEYS) -> pd.DataFrame:
    """The predictions table of a sweep's finished fine-tunes: each `ok` record's `test_predictions` file, or else the
    newest `<run_dir>/eval/test-*/test_predictions.csv` (what `medconv test` wrote for its test fold); binary only.
    `arm` joins the record's `arm_keys` with `/`; the arm keys and `family`, `init_kind` are kept as columns. A tile
    is named `<image_id>@<x>,<y>`; rows without a patient id are their own patient. Runs without a file are skipped."""
    parts = []
    for record in records:
        if record.get("status") != "ok":
            continue
        given = record.get("test_predictions")
        path = Path(given) if given and Path(given).is_file() else _newest_predictions(record["run_dir"]) if record.get("run_dir") else None
        if path is None:
            continue
        table = pd.read_csv(path, dtype={"image_id": str, "patient_id": str}, keep_default_na=False)
        if "prob_1" not in table.columns or "prob_2" in table.columns:
            continue
        image_id = table["image_id"].astype(str)
        if {"x", "y"} <= set(table.columns):
            image_id = image_id + "@" + table["x"].astype(str) + "," + table["y"].astype(str)
        patient = table["patient_id"].astype(str) if "patient_id" in table.columns else image_id
        fold = record.get("fold")
        part = pd.DataFrame({
            "arm": "/".join(f"{record.get(k)}" for k in arm_keys), "fold": -1 if fold is None or (isinstance(fold, float) and math.isnan(fold)) else int(fold),
            "seed": record.get("seed"), "image_id": image_id, "patient_id": patient.where(patient != "", image_id),
            "label": table["label_index"].astype(int), "prob": table["prob_1"].astype(float), "run_id": record.get("run_id"),
        })
        for key in (*arm_keys, "family", "init_kind"):
            part[key] = record.get(key)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*COLUMNS, "run_id", *arm_keys])


def arm_pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The comparisons a sweep asks for, as (a, b) arm pairs: each ViT backbone minus each CNN backbone at the same
    init and fraction, and each non-random init minus a random init of the same backbone and fraction."""
    if df.empty or not {"backbone", "family", "init", "init_kind", "fraction"} <= set(df.columns):
        return []
    arms = df.drop_duplicates("arm")[["arm", "backbone", "family", "init", "init_kind", "fraction"]].to_dict("records")
    pairs = [(v["arm"], c["arm"]) for v in arms for c in arms
             if v["family"] == "vit" and c["family"] == "cnn" and v["init"] == c["init"] and v["fraction"] == c["fraction"]]
    pairs += [(t["arm"], r["arm"]) for t in arms for r in arms if t["init_kind"] != "random" and r["init_kind"] == "random"
              and t["backbone"] == r["backbone"] and t["fraction"] == r["fraction"]]
    return pairs


def oof_tables(records: Sequence[dict], n_boot: int = 2000, level: float = 0.95, rng_seed: int = 0) -> dict[str, pd.DataFrame]:
    """`oof_arms` (pooled_oof) and `oof_paired` (paired_arms over `arm_pairs`) of a k-fold sweep's records; empty
    when no record has a fold or no run left predictions."""
    if not any(r.get("fold") is not None for r in records if r.get("status") == "ok"):
        return {}
    df = oof_predictions(records)
    if df.empty:
        return {}
    paired = [paired_arms(df, a, b, n_boot, level, rng_seed) for a, b in arm_pairs(df)]
    paired = [p for p in paired if len(p)]
    return {"oof_arms": pooled_oof(df, n_boot, level, rng_seed),
            "oof_paired": pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()}
