"""Tiny generated inputs for the notebooks in notebooks/, one fixture per notebook (see test_notebooks.NOTEBOOKS)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiles_dir(tmp_path_factory) -> Path:
    """A `medconv tile` output folder (summary.csv, <slide>.h5, _mask.png, _qc.png) of 2 tiny demo slides (512x384 um,
    64 px tiles at 1 um/px; demo_000 has pen ink, demo_001 tumour), for notebooks/tiling_qc.ipynb."""
    from medconv.demo.wsi import generate_demo_slides
    from medconv.tiling.cli import main

    root = tmp_path_factory.mktemp("notebook_tiles")
    generate_demo_slides(root / "demo", n_slides=2, seed=0, width=1024, height=768)
    out = root / "tiles"
    assert main([str(root / "demo" / "slides"), "--out", str(out), "--target-mpp", "1.0", "--tile-size", "64",
                 "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def infer_dir(inferred) -> Path:
    """A `medconv infer` output folder (summary.csv, quality.json, <slide>.h5/_heatmap.png/.geojson) of 3 held-out
    demo slides: the session's `inferred` (tests/conftest.py), for notebooks/slide_heatmaps.ipynb."""
    code, out = inferred
    assert code == 0
    return out


@pytest.fixture(scope="session")
def ablation_records_dir(tmp_path_factory) -> Path:
    """A `medconv ablate` output folder with hand-made result records (medconv.ablation.records' format): a CNN and
    a ViT, random and MIM init, 3 fractions x 3 seeds; the ViT trails at low fractions and MIM helps it most. For
    notebooks/ablation_analysis.ipynb."""
    import json

    out = tmp_path_factory.mktemp("ablation")
    (out / "records").mkdir()
    for family, backbone in (("cnn", "convnext_atto"), ("vit", "pvt_v2_b0")):
        for init, kind in (("random", "random"), ("mim", "pretrain")):
            for fraction in (0.05, 0.25, 1.0):
                for seed in (0, 1, 2):
                    auroc = 0.70 + 0.2 * fraction ** 0.5 + 0.01 * seed
                    auroc -= (0.08 * (1 - fraction) if family == "vit" else 0.0) - (0.06 if kind == "pretrain" and family == "vit" else 0.0)
                    run_id = f"{backbone}-{init}-f{fraction:g}-s{seed}"
                    record = {"run_id": run_id, "status": "ok", "error": None, "backbone": backbone, "family": family,
                              "init": init, "init_kind": kind, "fraction": fraction, "seed": seed, "split_seed": 0,
                              "steps": 100, "val": {"auroc": auroc + 0.01, "epoch": 3.0}, "test": {"auroc": auroc, "n": 384},
                              "best_epoch": 3.0, "wall_s": 30.0, "peak_rss_mb": 900.0 + 100 * (family == "vit"),
                              "cuda_peak_mb": None, "train_images_per_s": 150.0 if family == "cnn" else 110.0}
                    (out / "records" / f"{run_id}.json").write_text(json.dumps(record))
    (out / "records" / "pvt_v2_b0-mim-f1-s9.json").write_text(json.dumps({"run_id": "pvt_v2_b0-mim-f1-s9", "status": "failed",
                                                                        "error": "fit exited with 1"}))
    return out
