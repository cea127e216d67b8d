"""The tissue mask of `medconv tile` on demo slides matches the generator's ground truth.

Guards against the regression where background (glass) was taken for tissue and every tile was kept:
the slide goes through the real TIFF writer and reader, so a colour mix-up there shows here too.
"""

from __future__ import annotations

import numpy as np
import pytest

from medconv.demo.wsi import BACKGROUND, render_slide
from medconv.io.png import read_mask_png
from medconv.io.tiff_writer import write_pyramid_tiff
from medconv.tiling.coords_store import read_coords
from medconv.tiling.slide_tiler import TileOptions, tile_slide

WIDTH, HEIGHT, MPP = 1536, 1024, 0.5


def _block_mean(mask: np.ndarray, factor: int) -> np.ndarray:
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    return mask[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """A tumour slide with pen strokes (seed chosen so a stroke lies on glass and one crosses tissue), tiled."""
    out = tmp_path_factory.mktemp("demo_tissue")
    slide = render_slide(np.random.default_rng([0, 3]), WIDTH, HEIGHT, tumour=True, pen=True)
    write_pyramid_tiff(out / "slide.tif", slide.rgb, MPP)
    row = tile_slide(out / "slide.tif", out, "slide", TileOptions(target_mpp=1.0, tile_size=64))
    mask, ds = read_mask_png(out / "slide_mask.png")
    return slide, row, mask, int(round(ds)), read_coords(out / "slide.h5")


def test_background_is_glass_and_tissue_is_found(tiled):
    slide, row, mask, ds, (coords, attrs) = tiled
    slide_mm2 = WIDTH * HEIGHT * MPP**2 / 1e6
    truth = _block_mean(slide.tissue & ~slide.pen, ds)[: mask.shape[0], : mask.shape[1]] >= 0.5  # ink is excluded
    assert 0.3 < slide.tissue.mean() < 0.6  # the generator's coverage
    assert 0.25 < row["tissue_mm2"] / slide_mm2 < 0.65  # not the whole slide
    corner = 64 // ds  # 32 um squares in the corners are glass
    for ys in (slice(0, corner), slice(-corner, None)):
        for xs in (slice(0, corner), slice(-corner, None)):
            assert not mask[ys, xs].any()
    iou = (mask & truth).sum() / (mask | truth).sum()
    print(f"tissue mask vs generator's tissue without ink: IoU {iou:.3f}")
    assert iou > 0.9, f"tissue mask vs generator's tissue without ink: IoU {iou:.3f}"
    # tiles: far fewer than the full grid, and almost all of each kept tile's area is true tissue
    grid = (WIDTH // attrs["patch_size_level0"]) * (HEIGHT // attrs["patch_size_level0"])
    assert 0.25 * grid < len(coords) < 0.75 * grid
    size = attrs["patch_size_level0"]
    on_tissue = np.array([slide.tissue[y : y + size, x : x + size].mean() for x, y in coords])
    assert (on_tissue > 0.1).all() and on_tissue.mean() > 0.7


def test_pen_on_glass_is_not_tissue(tiled):
    slide, _, mask, ds, _ = tiled
    ink_on_glass = _block_mean(slide.pen & ~slide.tissue, ds)[: mask.shape[0], : mask.shape[1]] > 0.5
    assert ink_on_glass.sum() > 20  # the seed does put a stroke on glass
    assert mask[ink_on_glass].mean() < 0.02


def test_demo_colours_are_he_like(tiled):
    """White-ish glass, pink stroma, purple tumour, as read back from the TIFF (the writer bug made glass pink)."""
    from medconv.io.slide import open_slide

    slide, _, _, _, _ = tiled
    reader = open_slide(tiled[1]["path"])
    try:
        rgb = np.asarray(reader.read_region((0, 0), 0, (WIDTH, HEIGHT)))[..., :3].astype(np.float32)
    finally:
        reader.close()
    glass = ~slide.tissue & ~slide.pen
    assert np.abs(rgb[glass].mean(0) - BACKGROUND).max() < 4
    stroma = rgb[slide.tissue & ~slide.tumour & ~slide.pen].mean(0)
    tumour = rgb[slide.tumour & ~slide.pen].mean(0)
    for colour in (stroma, tumour):
        r, g, b = colour
        assert r > g + 25 and b > g + 15  # pink/purple: red and blue above green
    assert tumour.mean() < stroma.mean() - 30  # tumour is darker
