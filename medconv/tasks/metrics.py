"""Evaluation metrics per image and per group (breast, exam, slide), with patient-bootstrap confidence intervals.

torchmetrics computes sensitivity at specificity and balanced accuracy; AUROC and AUPRC come from medconv.stats.ranking,
whose float64 rank sums the bootstrap resamples too. This module adds reducing samples to groups (a breast scored
by the max over its views), calibration beside discrimination (medconv.stats.calibration), and intervals that
resample patients, not images (medconv.stats.bootstrap): a patient's views are correlated, so an image-level
bootstrap would count them as independent evidence and report intervals that are too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchmetrics.functional.classification import binary_sensitivity_at_specificity, multiclass_recall

from medconv import keys
from medconv.stats.bootstrap import cluster_bootstrap, clusters_of
from medconv.stats.calibration import calibration_metrics
from medconv.stats.ranking import macro, weighted_auroc, weighted_average_precision

REDUCERS: dict[str, Callable[..., np.ndarray]] = {"max": np.max, "mean": np.mean}
CI_METRICS = ("auroc", "auprc")


def aggregate_groups(
    group_keys: Sequence[tuple], probs: np.ndarray, labels: np.ndarray, reduce: str = "max"
) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """One row per group: probabilities reduced over members (max: a lesion seen in any view counts), label = max."""
    if reduce not in REDUCERS:
        raise ValueError(f"group_reduce must be one of {sorted(REDUCERS)}, not {reduce!r}")
    order: dict[tuple, list[int]] = {}
    for i, key in enumerate(group_keys):
        order.setdefault(key, []).append(i)
    keys = list(order)
    g_probs = np.stack([REDUCERS[reduce](probs[order[k]], axis=0) for k in keys])
    if reduce == "max" and probs.shape[1] > 2:
        g_probs = g_probs / g_probs.sum(axis=1, keepdims=True)
    g_labels = np.array([labels[order[k]].max() for k in keys])
    return keys, g_probs, g_labels


def classification_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """AUROC, AUPRC, balanced accuracy, for two classes sensitivity at 90% specificity, and calibration (`ece`,
    `ece_adaptive`, `brier`; see medconv.stats.calibration)."""
    n_classes = probs.shape[1]
    p = torch.as_tensor(probs, dtype=torch.float)
    y = torch.as_tensor(labels, dtype=torch.long)
    out: dict[str, float] = {"n": float(len(labels))}
    calibration = calibration_metrics(probs, labels, n_bins) if len(labels) else {}
    if len(np.unique(labels)) < 2:
        return out | {"auroc": float("nan"), "auprc": float("nan"), "bal_acc": float("nan")} | calibration
    # Exact float64 ranks (medconv.stats.ranking; equal to torchmetrics' to 1e-6), the computation the bootstrap
    # resamples: torchmetrics' float32 trapezoid scores a perfect split 1.0000001, above its own interval.
    out["auroc"] = float(macro(weighted_auroc, probs, labels)[0])
    out["auprc"] = float(macro(weighted_average_precision, probs, labels)[0])
    if n_classes == 2:
        out["sens_at_90spec"] = float(binary_sensitivity_at_specificity(p[:, 1], y, min_specificity=0.9)[0])
    out["bal_acc"] = float(multiclass_recall(p.argmax(1), y, num_classes=n_classes, average="macro"))
    return out | calibration


@dataclass
class BootstrapCI:
    """Percentile intervals per metric, and what was resampled (`resampled`, `clusters`, `resamples`, `degenerate`)."""

    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def bootstrap_ci(
    probs: np.ndarray, labels: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
    patient_ids: Sequence | None = None, unit: str = "patients",
) -> BootstrapCI:
    """Percentile intervals of AUROC and AUPRC over resamples of patients (`patient_ids`; without them, of
    images), stratified by each patient's highest label; resamples missing a class are redrawn and counted.
    Deterministic for a seed. Empty when a class is missing or n_boot is 0."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    if n_boot <= 0 or len(np.unique(labels)) < 2:
        return BootstrapCI()

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"auroc": macro(weighted_auroc, probs, labels, w), "auprc": macro(weighted_average_precision, probs, labels, w)}

    boot = cluster_bootstrap(statistic, clusters_of(patient_ids, labels, unit), n_boot, seed)
    return BootstrapCI({name: boot.interval(name, level) for name in CI_METRICS}, boot.describe())


@dataclass
class Evaluation:
    """Flat metrics (`<group>/<metric>`, `<metric>_ci_low|high`) and, per level (`image`, each group), what the
    bootstrap resampled."""

    metrics: dict[str, float]
    bootstrap: dict[str, dict] = field(default_factory=dict)


def levels(rows: dict, groups: dict[str, list[str]] | None = None, reduce: str = "max") -> dict[str, tuple]:
    """name -> (probs, labels, patient ids or None): the rows first (`image`, or `sample` when a group is itself
    named `image`, as a patch classifier's images are), then one per group whose id columns the rows carry (a
    group's patient is its first member's)."""
    patients = rows.get(keys.PATIENT_ID)
    row_level = "sample" if "image" in (groups or {}) else "image"
    out = {row_level: (np.asarray(rows["probs"]), np.asarray(rows["labels"]), patients)}
    for group, columns in (groups or {}).items():
        if all(c in rows for c in columns):
            g_keys = list(zip(*(rows[c] for c in columns), strict=True))
            keys_, g_probs, g_labels = aggregate_groups(g_keys, rows["probs"], rows["labels"], reduce)
            g_patients = None
            if patients is not None:
                first: dict[tuple, object] = {}
                for key, patient in zip(g_keys, patients, strict=True):
                    first.setdefault(key, patient)
                g_patients = [first[k] for k in keys_]
            out[group] = (g_probs, g_labels, g_patients)
    return out


def evaluate_report(
    rows: dict, groups: dict[str, list[str]] | None = None, reduce: str = "max", n_boot: int = 0, seed: int = 0,
    level: float = 0.95,
) -> Evaluation:
    """Metrics of gathered outputs (`probs`, `labels` and id columns), per sample and per group; group metrics are
    prefixed `<group>/`. With `n_boot`, each AUROC/AUPRC also gets `<metric>_ci_low` / `<metric>_ci_high` from a
    bootstrap over patients (`patient_id`), or over the level's rows when the rows carry no patient id."""
    out: dict[str, float] = {}
    info: dict[str, dict] = {}
    for index, (name, (probs, labels, patients)) in enumerate(levels(rows, groups, reduce).items()):
        prefix = "" if index == 0 else f"{name}/"  # the rows' metrics are unprefixed, a group's are `<group>/`
        out |= {prefix + k: v for k, v in classification_metrics(probs, labels).items()}
        ci = bootstrap_ci(probs, labels, n_boot, level, seed, patient_ids=patients)
        for metric, (low, high) in ci.intervals.items():
            out[f"{prefix}{metric}_ci_low"], out[f"{prefix}{metric}_ci_high"] = low, high
        if ci.info:
            info[name] = ci.info
    return Evaluation(out, info)


def evaluate(
    rows: dict, groups: dict[str, list[str]] | None = None, reduce: str = "max", n_boot: int = 0, seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """The flat metrics of `evaluate_report`."""
    return evaluate_report(rows, groups, reduce, n_boot, seed, level).metrics
