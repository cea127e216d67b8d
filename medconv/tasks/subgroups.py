"""Metrics per subgroup of the evaluated images: one value of a manifest column such as `density`, `site` or
`scanner`, each with its own patient-bootstrap interval, so a model that is good on average but poor on dense
breasts or on one scanner shows it.

A subgroup with fewer than `min_per_class` images of some class gets its metrics without an interval (a percentile
interval from two or three positives says nothing) and a note saying so; one with a single class gets no AUROC.
"""

from __future__ import annotations

import math

import numpy as np

from medconv import keys
from medconv.tasks.metrics import evaluate_report

MIN_PER_CLASS = 5


def subgroup_metrics(rows: dict, column: str, n_boot: int = 0, seed: int = 0, level: float = 0.95,
                     min_per_class: int = MIN_PER_CLASS) -> dict[str, dict]:
    """value of `column` -> image-level metrics of its rows (`n`, `patients`, `positives`, the metrics of
    `evaluate`, `*_ci_low|high` when large enough, `note` when not, `bootstrap` when resampled)."""
    values = np.asarray([str(v) for v in rows[column]], dtype=object)
    probs, labels = np.asarray(rows["probs"]), np.asarray(rows["labels"])
    patients = rows.get(keys.PATIENT_ID)
    n_classes = probs.shape[1]
    out: dict[str, dict] = {}
    for value in sorted(set(values.tolist())):
        index = np.flatnonzero(values == value)
        sub = {"probs": probs[index], "labels": labels[index]}
        if patients is not None:
            sub[keys.PATIENT_ID] = [patients[i] for i in index]
        counts = np.bincount(labels[index], minlength=n_classes)
        smallest = int(counts.min())
        enough = smallest >= min_per_class
        report = evaluate_report(sub, n_boot=n_boot if enough else 0, seed=seed, level=level)
        entry: dict = {"n": len(index), "patients": len(set(sub.get(keys.PATIENT_ID) or [])) or None,
                       "positives": int(counts[1]) if n_classes == 2 else None}
        entry |= {k: v for k, v in report.metrics.items() if k != "n" and not (isinstance(v, float) and math.isnan(v))}
        if smallest == 0:
            entry["note"] = "one class only: no AUROC"
        elif not enough and n_boot > 0:
            entry["note"] = f"{smallest} image(s) of its smallest class (< {min_per_class}): no interval"
        if report.bootstrap:
            entry["bootstrap"] = report.bootstrap["image"]
        out[value] = entry
    return out
