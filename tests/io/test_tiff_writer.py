"""Pyramid TIFFs written by medconv open in OpenSlide with the right colours, levels and mpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from medconv.io.tiff_writer import write_pyramid_tiff, write_pyramid_tiff_tiles


def tissue(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([220 + 30 * np.sin(xx / 29), 150 + 60 * np.cos(yy / 17), 210 + 40 * np.sin((xx - yy) / 41)], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_openslide_opens_it_with_colours_levels_and_mpp(tmp_path: Path) -> None:
    rgb = tissue(700, 1100)
    path = write_pyramid_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, min_size=256)
    assert [p.name for p in tmp_path.iterdir()] == ["slide.tiff"]  # no temp file left behind
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == ((1100, 700), (550, 350), (275, 175))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        read = np.asarray(slide.read_region((0, 0), 0, (1100, 700)))[..., :3]
    # RGB in, RGB out: a colour-space mix-up (RGB stored as if YCbCr) would drop this far below 30 dB
    assert psnr(read, rgb) > 35
    assert np.abs(read.reshape(-1, 3).mean(0) - rgb.reshape(-1, 3).mean(0)).max() < 2
    page = tifffile.TiffFile(path).pages[0]
    assert page.is_tiled and page.tilewidth == 256 and int(page.photometric) == 6  # YCbCr JPEG, 2x2 chroma


def test_no_mpp_writes_no_resolution(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "nompp.tiff", tissue(300, 300), mpp=None)
    with openslide.OpenSlide(str(path)) as slide:
        assert "openslide.mpp-x" not in slide.properties


def test_streamed_writer_equals_array_writer(tmp_path: Path) -> None:
    rgb = tissue(600, 900)  # partial edge tiles on both axes
    tile = 256

    def make_tile(col: int, row: int) -> np.ndarray:
        out = np.zeros((tile, tile, 3), np.uint8)
        part = rgb[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    a = write_pyramid_tiff(tmp_path / "a.tiff", rgb, mpp=0.5, min_size=128)
    b = write_pyramid_tiff_tiles(tmp_path / "b.tiff", 900, 600, make_tile, mpp=0.5, min_size=128)
    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        assert len(ta.pages) == len(tb.pages) == 3
        for pa, pb in zip(ta.pages, tb.pages, strict=True):
            assert pa.shape == pb.shape
            assert np.array_equal(pa.asarray(), pb.asarray())
    with openslide.OpenSlide(str(b)) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)


def test_streamed_writer_rejects_wrong_tiles_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="make_tile"):
        write_pyramid_tiff_tiles(tmp_path / "bad.tiff", 512, 512, lambda c, r: np.zeros((10, 10, 3), np.uint8), mpp=1.0)
    assert list(tmp_path.iterdir()) == []
