"""A tiny tile classifier trained by `medconv fit` on demo slides beats chance on held-out slides' tiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc


@pytest.mark.integration
def test_tiny_wsi_fit_beats_chance(tmp_path, monkeypatch, repo_root):
    from medconv.lightning_cli import run_lightning

    monkeypatch.chdir(tmp_path)  # demo slides, coords stores and runs/ land here
    cli = run_lightning([
        "fit",
        "--config", str(repo_root / "configs" / "wsi_convnext.yaml"),
        "--config", str(repo_root / "configs" / "tests" / "tiny_wsi.yaml"),
    ])
    dm = cli.datamodule
    val_slides = set(dm.splits["val"]["slide_id"])
    assert val_slides.isdisjoint(dm.splits["train"]["slide_id"])  # held out by patient
    assert set(dm.splits["val"]["label"]) == {"normal", "tumor"}
    assert {p.name for p in (tmp_path / "medconv_data" / "demo_wsi").glob("coords_64px_1mpp/*.h5")} >= {
        f"{s}.h5" for s in val_slides
    }

    preds = pd.read_csv(tmp_path / cli.trainer.log_dir / "val_predictions_best.csv")
    assert set(preds["slide_id"]) == val_slides
    labels = preds["label_index"].to_numpy()
    assert 0 < labels.sum() < len(labels)  # tumour tiles (from the masks) and normal tiles
    auroc = float(binary_auroc(torch.tensor(preds["prob_1"].to_numpy()), torch.tensor(labels)))
    print(f"tile-level AUROC on {len(labels)} held-out tiles ({labels.sum()} tumour): {auroc:.3f}")
    # Measured 1.0 with seed_everything 0, 1, 2 on an AVX-512 Xeon, and seed 0 with AVX2 and with baseline kernels
    # (ATEN_CPU_CAPABILITY=avx2|default, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS to match); the top tile of a
    # tumour slide scored >= 0.9998 and that of a normal slide <= 2e-5 in every run.
    assert auroc >= 0.75, f"tile-level AUROC on held-out slides {auroc:.3f}"
    by_slide = preds.groupby("slide_id")["prob_1"].max()
    tumour_slide = dm.splits["val"].set_index("slide_id")["label"].eq("tumor")
    assert by_slide[tumour_slide[tumour_slide].index].min() > by_slide[tumour_slide[~tumour_slide].index].max()
    assert np.isfinite(cli.trainer.callback_metrics["val/slide/auroc"].item())
