"""Evaluation metrics per image and per group (breast, exam, slide): pure functions over gathered outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_recall,
)


def aggregate_groups(
    group_keys: Sequence[tuple], probs: np.ndarray, labels: np.ndarray, reduce: str = "max"
) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """One row per group: probabilities reduced over members (max: a lesion seen in any view counts), label = max."""
    order: dict[tuple, list[int]] = {}
    for i, key in enumerate(group_keys):
        order.setdefault(key, []).append(i)
    reducer = {"max": np.max, "mean": np.mean}[reduce]
    keys = list(order)
    g_probs = np.stack([reducer(probs[order[k]], axis=0) for k in keys])
    if reduce == "max" and probs.shape[1] > 2:
        g_probs = g_probs / g_probs.sum(axis=1, keepdims=True)
    g_labels = np.array([labels[order[k]].max() for k in keys])
    return keys, g_probs, g_labels


def sensitivity_at_specificity(scores: np.ndarray, labels: np.ndarray, specificity: float = 0.9) -> float:
    """Sensitivity at the threshold that keeps at least `specificity` on negatives (screening's operating point)."""
    neg = np.sort(scores[labels == 0])
    pos = scores[labels == 1]
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    k = int(np.ceil(specificity * len(neg))) - 1
    threshold = neg[min(max(k, 0), len(neg) - 1)]
    return float((pos > threshold).mean())


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC, balanced accuracy, and for two classes sensitivity at 90% specificity."""
    n_classes = probs.shape[1]
    p = torch.as_tensor(probs, dtype=torch.float)
    y = torch.as_tensor(labels, dtype=torch.long)
    out: dict[str, float] = {"n": float(len(labels))}
    if len(np.unique(labels)) < 2:
        return out | {"auroc": float("nan"), "auprc": float("nan"), "bal_acc": float("nan")}
    if n_classes == 2:
        out["auroc"] = float(binary_auroc(p[:, 1], y))
        out["auprc"] = float(binary_average_precision(p[:, 1], y))
        out["sens_at_90spec"] = sensitivity_at_specificity(probs[:, 1], labels, 0.9)
    else:
        out["auroc"] = float(multiclass_auroc(p, y, num_classes=n_classes))
        out["auprc"] = float(multiclass_average_precision(p, y, num_classes=n_classes))
    out["bal_acc"] = float(multiclass_recall(p.argmax(1), y, num_classes=n_classes, average="macro"))
    return out
