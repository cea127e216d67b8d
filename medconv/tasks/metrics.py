"""Evaluation metrics per image and per group (breast, exam, slide), with bootstrap confidence intervals.

torchmetrics computes every per-sample metric; this module adds only what it lacks: reducing samples to
groups (a breast scored by the max over its views) and stratified bootstrap intervals for small test sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_sensitivity_at_specificity,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_recall,
)

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


def _auroc(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(binary_auroc(p[:, 1], y) if p.shape[1] == 2 else multiclass_auroc(p, y, num_classes=p.shape[1]))


def _auprc(p: torch.Tensor, y: torch.Tensor) -> float:
    if p.shape[1] == 2:
        return float(binary_average_precision(p[:, 1], y))
    return float(multiclass_average_precision(p, y, num_classes=p.shape[1]))


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC, balanced accuracy, and for two classes sensitivity at 90% specificity."""
    n_classes = probs.shape[1]
    p = torch.as_tensor(probs, dtype=torch.float)
    y = torch.as_tensor(labels, dtype=torch.long)
    out: dict[str, float] = {"n": float(len(labels))}
    if len(np.unique(labels)) < 2:
        return out | {"auroc": float("nan"), "auprc": float("nan"), "bal_acc": float("nan")}
    out["auroc"], out["auprc"] = _auroc(p, y), _auprc(p, y)
    if n_classes == 2:
        out["sens_at_90spec"] = float(binary_sensitivity_at_specificity(p[:, 1], y, min_specificity=0.9)[0])
    out["bal_acc"] = float(multiclass_recall(p.argmax(1), y, num_classes=n_classes, average="macro"))
    return out


def bootstrap_ci(
    probs: np.ndarray, labels: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of AUROC and AUPRC over resamples stratified by label (each keeps the class counts,
    so no resample is single-class). Deterministic for a seed. Empty when a class is missing or n_boot is 0."""
    classes = np.unique(labels)
    if n_boot <= 0 or len(classes) < 2:
        return {}
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in classes]
    p_all = torch.as_tensor(probs, dtype=torch.float)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    draws: dict[str, list[float]] = {name: [] for name in CI_METRICS}
    for _ in range(n_boot):
        index = torch.as_tensor(np.concatenate([rng.choice(m, size=len(m)) for m in members]))
        p, y = p_all[index], y_all[index]
        draws["auroc"].append(_auroc(p, y))
        draws["auprc"].append(_auprc(p, y))
    tail = (1 - level) / 2 * 100
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for name, v in draws.items()}


def evaluate(
    rows: dict, groups: dict[str, list[str]] | None = None, reduce: str = "max", n_boot: int = 0, seed: int = 0
) -> dict[str, float]:
    """Metrics of gathered outputs (`probs`, `labels` and id columns), per sample and per group; group metrics are
    prefixed `<group>/`. With `n_boot`, each AUROC/AUPRC also gets `<metric>_ci_low` / `<metric>_ci_high`."""
    levels = {"": (rows["probs"], rows["labels"])}
    for group, columns in (groups or {}).items():
        if all(c in rows for c in columns):
            g_keys = list(zip(*(rows[c] for c in columns), strict=True))
            _, g_probs, g_labels = aggregate_groups(g_keys, rows["probs"], rows["labels"], reduce)
            levels[f"{group}/"] = (g_probs, g_labels)
    out: dict[str, float] = {}
    for prefix, (probs, labels) in levels.items():
        out |= {prefix + k: v for k, v in classification_metrics(probs, labels).items()}
        for name, (low, high) in bootstrap_ci(probs, labels, n_boot, seed=seed).items():
            out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = low, high
    return out
