"""Demo slides: OpenSlide opens them with their mpp, masks mark the tumour, output depends only on the seed."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medconv.demo.wsi import MASK_DOWNSAMPLE, generate_demo_slides, main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate_demo_slides(out, n_slides=2, seed=3, width=1536, height=1024)
    return out


def _manifest(out) -> list[dict[str, str]]:
    with open(out / "manifest.csv") as f:
        return list(csv.DictReader(f))


def test_manifest_and_openslide(demo):
    import openslide

    rows = _manifest(demo)
    assert [r["label"] for r in rows] == ["normal", "tumor"]
    assert {"slide_path", "label", "patient_id", "mask_path", "mask_downsample"} <= set(rows[0])
    for row in rows:
        assert not row["slide_path"].startswith("/")
        slide = openslide.OpenSlide(str(demo / row["slide_path"]))
        assert slide.dimensions == (1536, 1024)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
        assert slide.level_count >= 2
        slide.close()


def test_tumour_mask_marks_dark_crowded_nuclei(demo):
    import openslide

    from medconv.io.png import read_mask_png
    from medconv.tiling.tissue import tissue_mask

    means = {}
    for row in _manifest(demo):
        mask, ds = read_mask_png(demo / row["mask_path"])
        assert ds == MASK_DOWNSAMPLE == int(row["mask_downsample"])
        assert mask.shape == (1024 // 16, 1536 // 16)
        slide = openslide.OpenSlide(str(demo / row["slide_path"]))
        thumb = np.asarray(slide.get_thumbnail((mask.shape[1], mask.shape[0])).convert("RGB"))[: mask.shape[0], : mask.shape[1]]
        slide.close()
        tissue = tissue_mask(thumb, min_object_px=4)
        if row["label"] == "normal":
            assert not mask.any()
        else:
            assert 0.05 < mask.mean() < 0.6
            assert (mask & tissue).sum() > 0.9 * mask.sum()  # tumour lies on tissue
            grey = thumb.mean(axis=2)
            means["tumour"], means["normal"] = grey[mask].mean(), grey[tissue & ~mask].mean()
    assert means["tumour"] < means["normal"] - 30  # tumour is clearly darker


def test_deterministic_for_a_seed(tmp_path):
    a = generate_demo_slides(tmp_path / "a", n_slides=2, seed=1, width=512, height=384).parent
    b = generate_demo_slides(tmp_path / "b", n_slides=2, seed=1, width=512, height=384).parent
    c = generate_demo_slides(tmp_path / "c", n_slides=2, seed=2, width=512, height=384).parent
    for name in ("slides/demo_001.tif", "masks/demo_001_tumor.png", "manifest.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "slides/demo_001.tif").read_bytes() != (c / "slides/demo_001.tif").read_bytes()


def test_cli_and_rerun_keeps_slides(tmp_path):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--n-slides", "2", "--width", "512", "--height", "384"]) == 0
    stamp = (out / "slides/demo_000.tif").stat().st_mtime_ns
    assert main(["--out", str(out), "--n-slides", "2", "--width", "512", "--height", "384"]) == 0
    assert (out / "slides/demo_000.tif").stat().st_mtime_ns == stamp
    assert main(["--out", str(out), "--n-slides", "0"]) == 2


def test_slides_from_an_older_generator_are_regenerated(tmp_path):
    """Demo slides cached by an older medconv (e.g. written with the pre-fix colours) are not reused."""
    import json

    out = tmp_path / "old"
    assert main(["--out", str(out), "--n-slides", "1", "--width", "512", "--height", "384"]) == 0
    params = json.loads((out / "demo_wsi_params.json").read_text())
    (out / "demo_wsi_params.json").write_text(json.dumps(params | {"version": params["version"] - 1}))
    (out / "slides/demo_000.tif").write_bytes(b"stale")
    assert main(["--out", str(out), "--n-slides", "1", "--width", "512", "--height", "384"]) == 0
    assert (out / "slides/demo_000.tif").read_bytes()[:2] in (b"II", b"MM")
