"""Tissue masks: real H&E tiles (tissue / background / almost white) and hand-made pen marks."""

from __future__ import annotations

import numpy as np
import pytest

from medconv.tiling.tissue import pen_mask, tissue_fraction, tissue_mask


def _load(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.realdata
def test_real_tiles_tissue_fraction(realdata):
    tiles = realdata / "tiles"
    tissue = tissue_fraction(_load(tiles / "tissue-level0-4302-10273-4814-10785.png"))
    background = tissue_fraction(_load(tiles / "no-tissue.png"))
    white = tissue_fraction(_load(tiles / "almost-white-1.png"))
    assert tissue > 0.5
    assert background < 0.05
    assert white < 0.01


def _pink_square_on_glass() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((200, 200, 3), 242, np.uint8)
    img[50:150, 50:150] = (225, 150, 195)
    return np.clip(img + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)


def test_pink_tissue_found_and_glass_not():
    mask = tissue_mask(_pink_square_on_glass())
    assert mask[60:140, 60:140].mean() > 0.99
    assert mask[:40].mean() == 0 and mask[:, 160:].mean() == 0


def test_pen_on_glass_excluded_and_holes_filled():
    img = _pink_square_on_glass()
    img[10:30, 20:180] = (25, 70, 195)  # blue pen on glass
    img[170:185, 20:180] = (35, 150, 70)  # green pen on glass
    img[90:100, 90:100] = 245  # small lumen inside the tissue
    mask = tissue_mask(img)
    assert mask[10:30].sum() == 0 and mask[170:185].sum() == 0
    assert mask[90:100, 90:100].all()
    assert pen_mask(img)[15, 100] and not pen_mask(img)[100, 60]


def test_hematoxylin_purple_is_not_pen():
    img = np.full((20, 20, 3), (90, 55, 140), np.uint8)  # nuclei colour
    assert not pen_mask(img).any()


def test_small_specks_dropped():
    img = np.full((100, 100, 3), 242, np.uint8)
    img[10:13, 10:13] = (200, 120, 180)
    img[40:90, 40:90] = (200, 120, 180)
    mask = tissue_mask(img, min_object_px=50)
    assert not mask[10:13, 10:13].any() and mask[50:80, 50:80].all()
