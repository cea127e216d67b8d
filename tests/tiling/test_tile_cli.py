"""`medconv tile` in-process: real slides, demo slides, failures, resume, missing mpp, usage errors."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest

from medconv.io.png import read_mask_png
from medconv.tiling.cli import main
from medconv.tiling.coords_store import is_complete, read_coords, read_dataset
from medconv.tiling.geometry import grid_in_mask

SMALL = ["--target-mpp", "1.0", "--tile-size", "64", "--workers", "1"]
CLAM_KEYS = {"patch_size", "patch_level", "downsample", "level_dim", "downsampled_level_dim", "name", "save_path"}
MEDCONV_KEYS = {"tile_size", "target_mpp", "slide_mpp", "level", "level_downsample", "read_size", "patch_size_level0",
                "overlap", "source_path", "slide_width", "slide_height", "mask_downsample"}


def _summary(out) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv") as f:
        return {row["slide"]: row for row in csv.DictReader(f)}


def _check_store(out, name, min_tissue=0.25):
    coords, attrs = read_coords(out / f"{name}.h5")
    assert CLAM_KEYS | MEDCONV_KEYS <= set(attrs)
    assert (coords >= 0).all()
    assert (coords[:, 0] + attrs["patch_size_level0"] <= attrs["slide_width"]).all()
    assert (coords[:, 1] + attrs["patch_size_level0"] <= attrs["slide_height"]).all()
    assert (read_dataset(out / f"{name}.h5", "tissue_fraction") >= min_tissue).all()
    mask, ds = read_mask_png(out / f"{name}_mask.png")
    assert ds == pytest.approx(attrs["mask_downsample"]) and mask.any()
    # Exactly the grid within the saved tissue mask (no tile missing, none outside), and the summary agrees.
    expected, _ = grid_in_mask(attrs["slide_width"], attrs["slide_height"], attrs["patch_size_level0"], attrs["stride_level0"],
                               mask, ds, min_tissue)
    assert len(expected) and np.array_equal(np.sort(coords, axis=0), np.sort(expected, axis=0))
    assert int(_summary(out)[name]["n_tiles"]) == len(coords)
    qc = cv2.imread(str(out / f"{name}_qc.png"))
    assert qc is not None and qc.ndim == 3 and qc.shape[2] == 3
    return coords, attrs


@pytest.mark.realdata
def test_real_svs_and_dicom(realdata, tmp_path):
    svs, dcm = realdata / "cmu-1-small-region.svs", realdata / "multiframe_camelyon_challenge_image.dcm"
    assert main([str(svs), "--out", str(tmp_path / "svs"), "--workers", "1"]) == 0
    coords, attrs = _check_store(tmp_path / "svs", "cmu-1-small-region")
    assert attrs["slide_mpp"] == pytest.approx(0.499)
    assert (attrs["patch_level"], attrs["read_size"], attrs["patch_size_level0"]) == (0, 257, 257)
    assert float(_summary(tmp_path / "svs")["cmu-1-small-region"]["tissue_mm2"]) > 0.1

    # the DICOM is a 29 um/px level: 0.5 um/px tiles would be invented detail, so it fails with a clear message
    assert main([str(dcm), "--out", str(tmp_path / "dcm"), "--workers", "1"]) == 1
    assert "use a target mpp >= 28.97" in _summary(tmp_path / "dcm")["multiframe_camelyon_challenge_image"]["error"]
    assert main([str(dcm), "--out", str(tmp_path / "dcm"), "--workers", "1", "--target-mpp", "29", "--tile-size", "16"]) == 0
    _, attrs = _check_store(tmp_path / "dcm", "multiframe_camelyon_challenge_image")
    assert attrs["slide_mpp"] == pytest.approx(28.969, abs=1e-3)


def test_demo_slides_two_workers_cover_tumour(demo_slides, tmp_path):
    out = tmp_path / "tiles"
    assert main([str(demo_slides / "slides"), "--out", str(out), *SMALL[:-2], "--workers", "2"]) == 0
    summary = _summary(out)
    assert sorted(summary) == ["demo_000", "demo_001", "demo_002"]
    assert {r["status"] for r in summary.values()} == {"ok"}
    for name in summary:
        coords, attrs = _check_store(out, name)
        assert (attrs["patch_level"], attrs["read_size"], attrs["patch_size_level0"]) == (1, 64, 128)
        assert int(summary[name]["n_tiles"]) == len(coords)
    # the tiles cover the tumour that the generator drew
    coords, attrs = read_coords(out / "demo_001.h5")
    tumour, ds = read_mask_png(demo_slides / "masks" / "demo_001_tumor.png")
    covered = np.zeros_like(tumour)
    for x, y in coords // int(ds):
        covered[y : y + 128 // int(ds), x : x + 128 // int(ds)] = True
    assert (covered & tumour).sum() / tumour.sum() > 0.8


def test_corrupt_and_truncated_slides_fail_alone(demo_slides, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(demo_slides / "slides" / "demo_000.tif", src / "good.tif")
    (src / "noise.svs").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    data = (demo_slides / "slides" / "demo_001.tif").read_bytes()
    (src / "truncated.tif").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), *SMALL]) == 1
    summary = _summary(out)
    assert summary["good"]["status"] == "ok" and is_complete(out / "good.h5")
    for bad in ("noise", "truncated"):
        assert summary[bad]["status"] == "failed"
        assert bad in summary[bad]["error"]  # the message names the file
        assert not (out / f"{bad}.h5").exists()


def test_resume_skips_finished_and_redoes_incomplete(demo_slides, tmp_path):
    out = tmp_path / "out"
    slides = [str(demo_slides / "slides" / f"demo_00{i}.tif") for i in (0, 1)]
    assert main([*slides, "--out", str(out), *SMALL]) == 0
    done = (out / "demo_000.h5").stat().st_mtime_ns
    # simulate an interrupted run of demo_001: a half-written store and a temp file
    good = (out / "demo_001.h5").read_bytes()
    (out / "demo_001.h5").write_bytes(good[:300])
    (out / ".demo_001.12345.tmp.h5").write_bytes(b"partial")  # medconv.io.atomic's temp name
    (out / ".demo_001.h5.12345.tmp").write_bytes(b"partial")  # the name older versions used
    assert main([*slides, "--out", str(out), *SMALL]) == 0
    summary = _summary(out)
    assert summary["demo_000"]["status"] == "skipped" and (out / "demo_000.h5").stat().st_mtime_ns == done
    assert summary["demo_000"]["n_tiles"] != ""
    assert summary["demo_001"]["status"] == "ok" and is_complete(out / "demo_001.h5")
    assert not (out / ".demo_001.12345.tmp.h5").exists() and not (out / ".demo_001.h5.12345.tmp").exists()
    # changed parameters or --overwrite redo finished slides
    assert main([slides[0], "--out", str(out), *SMALL, "--overwrite"]) == 0
    assert _summary(out)["demo_000"]["status"] == "ok"
    assert main([slides[0], "--out", str(out), "--target-mpp", "1.0", "--tile-size", "32", "--workers", "1"]) == 0
    assert _summary(out)["demo_000"]["status"] == "ok"
    assert read_coords(out / "demo_000.h5")[1]["tile_size"] == 32


def test_slide_without_mpp_refused_unless_given(tmp_path):
    from medconv.demo.wsi import render_slide
    from medconv.io.tiff_writer import write_pyramid_tiff

    rgb = render_slide(np.random.default_rng(0), 512, 384, tumour=False, pen=False).rgb
    write_pyramid_tiff(tmp_path / "nompp.tif", rgb, None)
    out = tmp_path / "out"
    assert main([str(tmp_path / "nompp.tif"), "--out", str(out), *SMALL]) == 1
    row = _summary(out)["nompp"]
    assert row["status"] == "failed" and "--slide-mpp" in row["error"] and "nompp.tif" in row["error"]
    assert main([str(tmp_path / "nompp.tif"), "--out", str(out), *SMALL, "--slide-mpp", "0.5"]) == 0
    assert read_coords(out / "nompp.h5")[1]["slide_mpp"] == 0.5


def test_usage_errors_exit_2(demo_slides, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "missing.svs"), "--out", out]) == 2
    assert "missing.svs" in capsys.readouterr().err
    assert main([str(tmp_path / "*.svs"), "--out", out]) == 2
    assert main([str(demo_slides / "slides"), "--out", out, "--overlap", "64", "--tile-size", "64"]) == 2
    assert main([str(demo_slides / "slides"), "--out", out, "--target-mpp", "-1"]) == 2
    assert main([]) == 2


def test_overlap_shortens_the_stride(demo_slides, tmp_path):
    slide = str(demo_slides / "slides" / "demo_000.tif")
    assert main([slide, "--out", str(tmp_path), *SMALL, "--overlap", "32", "--min-tissue", "0"]) == 0
    coords, attrs = read_coords(tmp_path / "demo_000.h5")
    assert attrs["stride_level0"] == 64 and attrs["patch_size_level0"] == 128
    xs = np.unique(coords[:, 0])
    assert np.diff(xs).tolist() == [64] * (len(xs) - 1) and xs.max() + 128 <= 1024


def test_rewritten_slide_is_retiled(demo_slides, tmp_path):
    """A slide file replaced in place (e.g. demo slides regenerated after a writer fix) is not matched with old coords."""
    slide = tmp_path / "slide.tif"
    shutil.copy(demo_slides / "slides" / "demo_000.tif", slide)
    out = tmp_path / "out"
    assert main([str(slide), "--out", str(out), *SMALL]) == 0
    assert main([str(slide), "--out", str(out), *SMALL]) == 0
    assert _summary(out)["slide"]["status"] == "skipped"
    shutil.copy(demo_slides / "slides" / "demo_001.tif", slide)
    assert main([str(slide), "--out", str(out), *SMALL]) == 0
    assert _summary(out)["slide"]["status"] == "ok"
    assert read_coords(out / "slide.h5")[1]["source_size"] == slide.stat().st_size
