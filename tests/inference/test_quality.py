"""Heatmap quality against ground truth given as polygons (CAMELYON16-style annotations) or mask PNGs,
on hand-made outputs (no model): tile AUROC, slide AUROC and FROC."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medconv.inference.heatmap import Aggregation
from medconv.inference.quality import evaluate_dir
from medconv.inference.slide_outputs import SlideSettings, write_slide_outputs
from medconv.io.png import write_mask_png
from medconv.tiling.geometry import grid_positions

SETTINGS = SlideSettings(("normal", "tumor"), 1, Aggregation("max"), 0.5)
TUMOUR = (200, 200, 500, 500)  # level-0 box: 600 um across at 2 um/px, no isolated tumour cell


def _attrs(width=1000, height=800):
    return {"slide_width": width, "slide_height": height, "slide_mpp": 2.0, "patch_size_level0": 100,
            "stride_level0": 100.0, "patch_size": 100, "patch_level": 0, "tile_size": 100, "target_mpp": 0.5}


def _slide(out, name, tumour: bool, rng):
    coords = grid_positions(1000, 800, 100, 100)
    x0, y0, x1, y1 = TUMOUR
    inside = (coords[:, 0] >= x0) & (coords[:, 0] + 100 <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] + 100 <= y1)
    p = np.where(inside & tumour, rng.uniform(0.7, 1.0, len(coords)), rng.uniform(0.0, 0.3, len(coords)))
    write_slide_outputs(out, name, coords, np.stack([1 - p, p], 1), _attrs(), SETTINGS, {"model": "m"}, None)


def test_quality_from_polygons_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    out.mkdir()
    for name, tumour in (("a", True), ("b", False), ("c", True)):
        _slide(out, name, tumour, rng)
    x0, y0, x1, y1 = TUMOUR
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}]}))
    mask = np.zeros((50, 63), bool)  # slide c as a mask PNG at downsample 16
    mask[y0 // 16:y1 // 16, x0 // 16:x1 // 16] = True
    write_mask_png(tmp_path / "c_tumor.png", mask, 16)
    (tmp_path / "truth.csv").write_text("slide_id,annotation_path,mask_path\na,a.geojson,\nb,,\nc,,c_tumor.png\n")
    report = evaluate_dir(out, tmp_path / "truth.csv", n_boot=50)
    assert report["n_slides"] == 3
    assert report["slides"]["a"]["tumour_tiles"] == 9 and report["slides"]["b"]["tumour_tiles"] == 0
    assert report["tile"]["auroc"] == pytest.approx(1.0)
    assert report["slide"]["auroc"] == pytest.approx(1.0)
    assert report["froc"]["targets"] == 2 and report["froc"]["score"] == pytest.approx(1.0)


def test_quality_sees_a_heatmap_that_misses_the_tumour(tmp_path):
    rng = np.random.default_rng(1)
    out = tmp_path / "out"
    out.mkdir()
    _slide(out, "a", False, rng)  # tumour in the truth, none in the scores
    x0, y0, x1, y1 = TUMOUR
    mask = np.zeros((50, 63), bool)
    mask[y0 // 16:y1 // 16, x0 // 16:x1 // 16] = True
    write_mask_png(tmp_path / "masks" / "a_tumor.png", mask, 16)
    report = evaluate_dir(out, tmp_path / "masks", n_boot=0)
    assert report["tile"]["auroc"] < 0.8
    assert report["froc"]["score"] == pytest.approx(0.0)
