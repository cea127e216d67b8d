"""One binary score's AUROC with a patient-bootstrap interval, and two scores of the same cases compared.

Two arms scored on the same images are compared on those images, paired: by DeLong's test (cases independent)
and by a paired patient bootstrap (the same resampled patients score both arms, so what a hard patient does to
both cancels, and several images of one patient count as one draw). The two agree when patients contribute one
image each; with several images per patient the bootstrap is the one that respects the correlation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medconv.stats.bootstrap import cluster_bootstrap, clusters_of
from medconv.stats.delong import delong_test
from medconv.stats.ranking import weighted_auroc


def _binary(labels: Sequence[int]) -> np.ndarray:
    y = np.asarray(labels)
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"labels must be 0/1 (got {sorted(set(np.unique(y).tolist()))[:5]})")
    return y == 1


def auroc_with_ci(scores: Sequence[float], labels: Sequence[int], patient_ids: Sequence | None = None, n_boot: int = 2000,
                  level: float = 0.95, seed: int = 0) -> dict:
    """`auroc`, `ci_low`, `ci_high` (percentile, patients resampled) and what was resampled."""
    scores, positive = np.asarray(scores, dtype=float), _binary(labels)
    point = float(weighted_auroc(scores, positive)[0])
    out = {"n": len(scores), "positives": int(positive.sum()), "auroc": point, "ci_low": math.nan, "ci_high": math.nan}
    if n_boot <= 0 or math.isnan(point):
        return out
    boot = cluster_bootstrap(lambda w: {"auroc": weighted_auroc(scores, positive, w)}, clusters_of(patient_ids, positive.astype(int)),
                             n_boot, seed)
    out["ci_low"], out["ci_high"] = boot.interval("auroc", level)
    return out | boot.describe()


def compare_aurocs(scores_a: Sequence[float], scores_b: Sequence[float], labels: Sequence[int], patient_ids: Sequence | None = None,
                   n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """AUROC(a) - AUROC(b) on the same cases: DeLong (`delong_se`, `delong_ci_low/high`, `delong_z`, `delong_p`) and the
    paired patient bootstrap (`boot_ci_low/high`; `boot_p`: twice the smaller share of resampled differences on
    either side of 0), with what was resampled."""
    a, b, positive = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float), _binary(labels)
    if a.shape != b.shape or a.shape != positive.shape:
        raise ValueError(f"compare_aurocs needs scores of the same cases (got {a.shape}, {b.shape} and {positive.shape} labels)")
    d = delong_test(a, b, positive.astype(int), level)
    out = {"n": len(a), "positives": int(positive.sum()), "auroc_a": d.auroc_a, "auroc_b": d.auroc_b, "diff": d.diff,
           "delong_se": d.se, "delong_ci_low": d.ci_low, "delong_ci_high": d.ci_high, "delong_z": d.z, "delong_p": d.p,
           "boot_ci_low": math.nan, "boot_ci_high": math.nan, "boot_p": math.nan}
    if n_boot <= 0:
        return out

    def diff(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"diff": weighted_auroc(a, positive, w) - weighted_auroc(b, positive, w)}

    boot = cluster_bootstrap(diff, clusters_of(patient_ids, positive.astype(int)), n_boot, seed)
    out["boot_ci_low"], out["boot_ci_high"] = boot.interval("diff", level)
    draws = boot.draws["diff"]
    if len(draws):
        out["boot_p"] = float(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())))
    return out | boot.describe()
