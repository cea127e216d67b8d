"""`medconv infer` on held-out demo slides with a model trained in the fixture: complete outputs, valid GeoJSON,
a heatmap that finds the tumour, resume, failures reported while the others finish."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shapely.geometry import box, shape

from medconv.inference.cli import main
from medconv.inference.quality import main as quality_main
from medconv.tiling.coords_store import read_coords

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLIDES = ["demo_000", "demo_001", "demo_002"]


def test_every_slide_gets_complete_outputs(inferred, held_out_slides):
    code, out = inferred
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary["slide"].tolist() == SLIDES
    assert (summary["status"] == "ok").all() and (summary["n_tiles"] > 10).all()
    assert set(summary.columns) >= {"score", "predicted_class", "seconds", "tiles_per_s", "error", "score_tumor"}
    # the tumour slide scores highest and is called tumour; topk:3 is the mean of the 3 best tiles
    assert summary.set_index("slide")["predicted_class"].to_dict() == {"demo_000": "normal", "demo_001": "tumor",
                                                                        "demo_002": "normal"}
    for name in SLIDES:
        coords, attrs = read_coords(out / f"{name}.h5")  # a coords store CLAM/TRIDENT/medconv read
        assert {"patch_size", "patch_level", "downsample", "level_dim", "patch_size_level0", "target_mpp"} <= set(attrs)
        assert attrs["tile_size"] == 64 and attrs["target_mpp"] == 1.0
        with h5py.File(out / f"{name}.h5", "r") as f:
            scores, heat = f["scores"][()], f["heatmap"][()]
            assert f.attrs["complete"] and json.loads(f.attrs["classes"]) == ["normal", "tumor"]
            row = summary.set_index("slide").loc[name]
            top3 = np.sort(scores[:, 1])[-3:].mean()
            assert row["score"] == pytest.approx(top3, abs=1e-5)
        assert scores.shape == (len(coords), 2) and np.allclose(scores.sum(1), 1, atol=1e-4)
        assert heat.shape[0] == 2 and np.isfinite(heat).sum() >= 2 * len(coords)  # one cell per tile, two classes
        with Image.open(out / f"{name}_heatmap.png") as im:
            assert im.size[0] > 400 and im.mode in ("RGBA", "RGB")


def test_geojson_is_valid_and_inside_the_slide(inferred):
    _, out = inferred
    for name in SLIDES:
        _, attrs = read_coords(out / f"{name}.h5")
        slide = box(0, 0, attrs["slide_width"], attrs["slide_height"])
        features = json.loads((out / f"{name}.geojson").read_text())["features"]
        tiles = [f for f in features if f["properties"]["objectType"] == "tile"]
        assert len(tiles) == attrs["n_tiles"]
        for feature in features:
            geometry = shape(feature["geometry"])
            assert geometry.is_valid and slide.contains(geometry)
            assert all(ring[0] == ring[-1] for ring in feature["geometry"]["coordinates"])
            assert all(isinstance(v, float) for v in feature["properties"]["measurements"].values())
        regions = [f for f in features if f["properties"]["objectType"] == "annotation"]
        if name == "demo_001":
            assert regions and all(f["properties"]["measurements"]["area_mm2"] > 0 for f in regions)


def test_heatmap_finds_the_tumour(inferred, held_out_slides, tmp_path):
    _, out = inferred
    report = json.loads((out / "quality.json").read_text())  # written by `medconv infer ... --masks`
    print(f"held-out tile AUROC {report['tile']['auroc']:.3f}, FROC {report['froc']['score']:.3f}")
    assert report["tile"]["positives"] >= 5
    # Tile AUROC measured 1.0 with seed_everything 0, 1, 2 on an AVX-512 Xeon, and seed 0 with AVX2 and with baseline kernels.
    assert report["tile"]["auroc"] >= 0.9 and report["tile"]["auroc_ci_low"] <= report["tile"]["auroc"]
    assert report["froc"]["targets"] >= 1 and report["froc"]["score"] > 0
    # `medconv evaluate-heatmaps` reads the same outputs afterwards and agrees
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert quality_main([str(copy), "--masks", str(held_out_slides / "manifest.csv"), "--bootstrap", "0"]) == 0
    again = json.loads((copy / "quality.json").read_text())
    assert again["tile"]["auroc"] == pytest.approx(report["tile"]["auroc"]) and again["n_slides"] == 3


def test_rerun_skips_done_slides_and_redoes_an_interrupted_one(inferred, tiny_wsi_run, held_out_slides, tmp_path):
    _, done = inferred
    out = tmp_path / "out"
    shutil.copytree(done, out)
    before = (out / "demo_002.geojson").stat().st_mtime_ns
    # demo_000 was interrupted after its PNG and GeoJSON: no h5 yet, a temp file of the h5 left behind
    (out / "demo_000.h5").unlink()
    (out / ".demo_000.999.tmp.h5").write_bytes(b"partial")
    code = main([str(tiny_wsi_run), str(held_out_slides / "slides"), "--out", str(out), "--num-workers", "0",
                 "--aggregate", "topk:3"])
    assert code == 0
    status = pd.read_csv(out / "summary.csv").set_index("slide")["status"].to_dict()
    assert status == {"demo_000": "ok", "demo_001": "skipped", "demo_002": "skipped"}
    assert (out / "demo_002.geojson").stat().st_mtime_ns == before
    assert not list(out.glob(".*.tmp*"))
    assert read_coords(out / "demo_000.h5")[1]["n_tiles"] > 0
    # nothing left to run: the process scores a placeholder tile (Lightning wants a batch) and drops it
    assert main([str(tiny_wsi_run), str(held_out_slides / "slides"), "--out", str(out), "--num-workers", "0",
                 "--aggregate", "max"]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("slide")
    assert (summary["status"] == "skipped").all()
    with h5py.File(out / "demo_001.h5", "r") as f:  # a skipped slide's score follows the current --aggregate
        assert summary.loc["demo_001", "score"] == pytest.approx(float(f["scores"][:, 1].max()), abs=1e-5)


def test_bad_slides_are_reported_and_the_others_finish(tiny_wsi_run, held_out_slides, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(held_out_slides / "slides" / "demo_001.tif", slides)
    (slides / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing else
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(slides / "no_mpp.png")  # no microns per pixel
    out = tmp_path / "out"
    code = main([str(tiny_wsi_run), str(slides), "--out", str(out), "--num-workers", "0"])
    assert code == 1
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("slide")
    assert summary.loc["demo_001", "status"] == "ok"
    assert summary.loc["broken", "status"] == "failed" and "broken.tif" in summary.loc["broken", "error"]
    assert summary.loc["no_mpp", "status"] == "failed" and "--slide-mpp" in summary.loc["no_mpp", "error"]
    assert not (out / "broken.h5").exists() and not (out / "no_mpp.h5").exists()


@pytest.mark.realdata
def test_real_svs_outputs_complete_and_geojson_inside_the_slide(tiny_wsi_run, repo_root, tmp_path):
    svs = repo_root.parent / "shared" / "realdata" / "cmu-1-small-region.svs"
    if not svs.exists():
        pytest.skip(f"{svs} absent")
    out = tmp_path / "out"
    assert main([str(tiny_wsi_run), str(svs), "--out", str(out), "--num-workers", "0", "--batch-size", "64"]) == 0
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["status"] == "ok" and row["n_tiles"] > 50
    for suffix in (".h5", ".geojson", "_heatmap.png"):
        assert (out / f"cmu-1-small-region{suffix}").stat().st_size > 0
    from medconv.io.slide import open_slide

    with open_slide(svs) as reader:
        width, height = reader.dimensions
    coords = np.array([pt for f in json.loads((out / "cmu-1-small-region.geojson").read_text())["features"]
                       for ring in f["geometry"]["coordinates"] for pt in ring])
    assert len(coords) >= 5 * row["n_tiles"]
    assert coords.min() >= 0 and coords[:, 0].max() <= width and coords[:, 1].max() <= height
