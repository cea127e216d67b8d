"""Pure grid geometry on hand-made sizes and masks: no slide needed."""

from __future__ import annotations

import numpy as np
import pytest

from medconv.tiling.geometry import (
    choose_level,
    from_thumbnail,
    grid_in_mask,
    grid_positions,
    heatmap_indices,
    heatmap_shape,
    mask_fractions,
    plan_tiles,
    to_thumbnail,
)


def test_grid_drop_keeps_only_full_tiles():
    pos = grid_positions(10, 7, size=4, stride=4)
    assert pos.tolist() == [[0, 0], [4, 0]]  # x=8 would end at 12 > 10; y=4 would end at 8 > 7
    assert pos.dtype == np.int64


def test_grid_include_adds_partial_edge_tiles():
    pos = grid_positions(10, 7, size=4, stride=4, edge="include")
    assert sorted(map(tuple, pos.tolist())) == sorted((x, y) for x in (0, 4, 8) for y in (0, 4))


def test_grid_shift_adds_flush_last_tile():
    pos = grid_positions(10, 8, size=4, stride=4, edge="shift")
    assert sorted({x for x, _ in pos.tolist()}) == [0, 4, 6]  # last tile ends exactly at 10
    assert sorted({y for _, y in pos.tolist()}) == [0, 4]  # 8 is already covered exactly


def test_grid_overlap_stride_and_too_small_image():
    pos = grid_positions(10, 4, size=4, stride=3)
    assert [x for x, _ in pos.tolist()] == [0, 3, 6]
    assert grid_positions(3, 3, size=4, stride=4).shape == (0, 2)


def test_grid_fractional_stride_is_rounded_not_drifting():
    pos = grid_positions(100, 10, size=10, stride=10 * 1.5)
    assert [x for x, _ in pos.tolist()] == [0, 15, 30, 45, 60, 75, 90]


def test_choose_level_picks_coarsest_not_coarser_than_target():
    ds = (1.0, 4.0, 16.0)
    assert choose_level(ds, 1.0) == 0
    assert choose_level(ds, 2.0) == 0
    assert choose_level(ds, 4.0) == 1
    assert choose_level((1.0, 3.9998, 16.0), 4.0) == 1  # rounding in pyramid downsamples tolerated
    assert choose_level(ds, 10.0) == 1
    assert choose_level(ds, 64.0) == 2


def test_plan_tiles_reads_from_level_and_scales():
    # 0.25 um/px slide with levels 1, 4, 16; tiles of 256 px at 1.0 um/px -> level 1, read 256
    plan = plan_tiles((1.0, 4.0, 16.0), slide_mpp=0.25, target_mpp=1.0, tile_size=256)
    assert (plan.level, plan.read_size, plan.patch_size_level0, plan.stride_level0) == (1, 256, 1024, 1024.0)
    # 0.5 um/px at 0.25 slide -> level 0, read 512 px and shrink
    plan = plan_tiles((1.0, 4.0, 16.0), slide_mpp=0.25, target_mpp=0.5, tile_size=256, overlap=32)
    assert (plan.level, plan.read_size, plan.patch_size_level0, plan.stride_level0) == (0, 512, 512, 448.0)


def test_plan_tiles_refuses_upsampling_and_bad_overlap():
    with pytest.raises(ValueError, match="finer than the slide"):
        plan_tiles((1.0,), slide_mpp=1.0, target_mpp=0.5, tile_size=256)
    plan = plan_tiles((1.0,), slide_mpp=0.26, target_mpp=0.25, tile_size=256)  # small upsample is accepted
    assert plan.read_size == 246
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles((1.0,), slide_mpp=0.5, target_mpp=0.5, tile_size=256, overlap=256)


def test_mask_fractions_hand_made():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # top-left quarter, mask at downsample 2 of an 8x8 image
    pos = np.array([[0, 0], [4, 0], [2, 2], [6, 6]])
    frac = mask_fractions(pos, size=4, mask=mask, mask_downsample=2)
    assert frac.tolist() == [1.0, 0.0, 0.25, 0.0]


def test_mask_fractions_outside_counts_as_empty():
    mask = np.ones((2, 2), bool)
    frac = mask_fractions(np.array([[2, 2]]), size=4, mask=mask, mask_downsample=2)
    assert frac.tolist() == [0.25]


def test_grid_in_mask_keeps_tiles_over_min_fraction():
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True  # centre of a 30x30 image at downsample 10
    pos, frac = grid_in_mask(30, 30, size=10, stride=10, mask=mask, mask_downsample=10, min_fraction=0.5)
    assert pos.tolist() == [[10, 10]] and frac.tolist() == [1.0]
    pos, _ = grid_in_mask(30, 30, size=20, stride=10, mask=mask, mask_downsample=10, min_fraction=0.25)
    assert len(pos) == 4  # every 2x2-cell tile touches the centre cell


def test_coords_thumbnail_round_trip():
    boxes = to_thumbnail(np.array([[64, 128]]), size=32, downsample=16)
    assert boxes.tolist() == [[4, 8, 6, 10]]
    assert from_thumbnail(np.array([[4, 8]]), downsample=16).tolist() == [[64, 128]]


def test_heatmap_indices_and_shape():
    pos = grid_positions(100, 50, size=20, stride=20)
    idx = heatmap_indices(pos, stride=20)
    rows, cols = heatmap_shape(100, 50, stride=20)
    assert (rows, cols) == (3, 5)
    assert idx.min() == 0 and idx[:, 0].max() < rows and idx[:, 1].max() < cols
    assert len({tuple(i) for i in idx.tolist()}) == len(pos)  # one cell per tile
