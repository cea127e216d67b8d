"""What the sweep tests share: a small sweep file's content, and the files a `medconv test` child leaves."""

from __future__ import annotations

import json
from pathlib import Path


def raw_sweep(tmp_path: Path, **changes) -> dict:
    """Two backbones (one per family), random + a pretraining init, two fractions and seeds; `changes` replace keys."""
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    (tmp_path / "pre.yaml").write_text("trainer: {}\n")
    raw = {"configs": ["base.yaml"], "backbones": [{"name": "convnext_atto", "family": "cnn"},
                                                   {"name": "pvt_v2_b0", "family": "vit"}],
           "inits": {"random": "random", "mim": {"pretrain": ["pre.yaml"]}}, "fractions": [0.05, 1.0],
           "seeds": [0, 1], "split_seed": 3, "steps": 50}
    return {**raw, **changes}


def write_test_outputs(args: list[str], predictions: str | None = None) -> Path:
    """Stand in for `medconv test --config <run>/config.yaml ...`: its report (and per-image predictions)."""
    out = Path(args[2]).parent / "eval" / "test-1"
    out.mkdir(parents=True)
    (out / "test_metrics.json").write_text(json.dumps({"metrics": {"auroc": 0.75, "n": 4}}))
    if predictions is not None:
        (out / "test_predictions.csv").write_text(predictions)
    return out
