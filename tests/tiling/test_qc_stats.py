"""The tiling QC numbers (`tile_stats`, `few_tiles`) on hand-made stores: what notebooks/tiling_qc shows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medconv.tiling.qc import few_tiles, tile_stats


def test_tile_stats_counts_tiles_area_and_tissue_fraction():
    coords = np.array([[0, 0], [200, 0], [0, 200], [200, 200]])
    attrs = {"slide_mpp": 0.5, "patch_size_level0": 200, "tissue_mm2": 0.05}
    stats = tile_stats(coords, attrs, np.array([1.0, 0.9, 0.4, 0.3]))
    assert stats["n_tiles"] == 4
    assert stats["tiled_mm2"] == pytest.approx(4 * (200 * 0.5) ** 2 / 1e6)  # 4 tiles of 100 um
    assert stats["tissue_mm2"] == pytest.approx(0.05)
    assert stats["median_tissue_fraction"] == pytest.approx(0.65)
    assert stats["share_under_half_tissue"] == pytest.approx(0.5)


def test_tile_stats_of_an_empty_or_foreign_store_are_nan_not_errors():
    stats = tile_stats(np.zeros((0, 2), np.int64), {"slide_mpp": 0.5, "patch_size_level0": 200})
    assert stats["n_tiles"] == 0 and stats["tiled_mm2"] == 0
    assert math.isnan(stats["median_tissue_fraction"]) and math.isnan(stats["tissue_mm2"])
    clam = tile_stats(np.array([[0, 0]]), {"patch_size": 256})  # a CLAM store: no mpp, no tissue fractions
    assert clam["n_tiles"] == 1 and math.isnan(clam["tiled_mm2"]) and math.isnan(clam["share_under_half_tissue"])


def test_few_tiles_flags_absolute_and_relative_shortfalls():
    assert few_tiles([400, 380, 360, 60, 20], min_tiles=50, relative=0.25).tolist() == [False, False, False, True, True]
    assert few_tiles([400, 380, 90], min_tiles=50, relative=0.25).tolist() == [False, False, True]  # < 0.25 x 380
    assert few_tiles([10, 12], min_tiles=5, relative=0.5).tolist() == [False, False]
    assert few_tiles([]).shape == (0,)
