"""Heatmap assembly and slide-score aggregation on hand-made grids."""

from __future__ import annotations

import numpy as np
import pytest

from medconv.inference.heatmap import (
    Aggregation,
    aggregate_scores,
    assemble_heatmap,
    heatmap_downsample,
    heatmap_shape,
    parse_aggregate,
)


def test_non_overlapping_tiles_fill_one_cell_each_and_leave_gaps_nan():
    coords = np.array([[0, 0], [100, 0], [200, 100]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    ds = heatmap_downsample(100, 100, 300, 200)
    assert ds == 100
    heat, counts = assemble_heatmap(coords, scores, 100, ds, heatmap_shape(300, 200, ds))
    assert heat.shape == (2, 2, 3)
    np.testing.assert_allclose(heat[1, 0, :2], [0.1, 0.8])
    assert heat[1, 1, 2] == pytest.approx(0.5)
    assert np.isnan(heat[:, 1, 0]).all() and np.isnan(heat[:, 0, 2]).all()  # no tile there
    assert counts.tolist() == [[1, 1, 0], [0, 0, 1]]


def test_half_overlap_averages_the_tiles_covering_each_cell():
    # 4x4 tiles every 2 px: each tile covers 2x2 cells of 2 px, the middle cell is shared by all four tiles
    coords = np.array([[0, 0], [2, 0], [0, 2], [2, 2]])
    scores = np.array([[1.0], [0.0], [0.0], [0.6]])
    ds = heatmap_downsample(4, 2, 6, 6)
    assert ds == 2
    heat, counts = assemble_heatmap(coords, scores, 4, ds, heatmap_shape(6, 6, ds))
    assert counts.tolist() == [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    assert heat[0, 0, 0] == pytest.approx(1.0)
    assert heat[0, 0, 1] == pytest.approx(0.5)  # tiles 0 and 1
    assert heat[0, 1, 1] == pytest.approx(1.6 / 4)  # all four
    assert heat[0, 2, 2] == pytest.approx(0.6)
    assert heat[0, 1, 2] == pytest.approx(0.3)  # tiles 1 and 3


def test_a_third_overlap_gets_an_exact_finer_grid_and_huge_slides_a_coarser_one():
    assert heatmap_downsample(300, 200, 1000, 1000) == pytest.approx(100)  # 3 cells per tile, 2 per stride
    assert heatmap_downsample(32, 32, 100_000, 80_000, max_side=1000) == pytest.approx(100)
    assert heatmap_shape(1001, 999, 100) == (10, 11)


def test_tiles_at_the_border_are_clipped_to_the_map():
    heat, counts = assemble_heatmap(np.array([[150, 150]]), np.array([[0.7]]), 100, 100, (2, 2))
    assert counts.tolist() == [[0, 0], [0, 1]]
    assert heat[0, 1, 1] == pytest.approx(0.7)


def test_no_tiles_gives_an_all_nan_map():
    heat, counts = assemble_heatmap(np.zeros((0, 2)), np.zeros((0, 2)), 10, 10, (3, 4))
    assert heat.shape == (2, 3, 4) and np.isnan(heat).all() and counts.sum() == 0


def test_aggregations():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.6, 0.4]])
    np.testing.assert_allclose(aggregate_scores(scores, "mean"), [0.6, 0.4])
    np.testing.assert_allclose(aggregate_scores(scores, "max"), [0.9, 0.9])
    np.testing.assert_allclose(aggregate_scores(scores, "topk:2"), [0.85, 0.65])
    np.testing.assert_allclose(aggregate_scores(scores, "topk"), [0.6, 0.4])  # k=10 > 4 tiles: all of them
    assert np.isnan(aggregate_scores(np.zeros((0, 2)), "max")).all()


@pytest.mark.parametrize("text, expected", [("max", Aggregation("max")), ("MEAN", Aggregation("mean")),
                                            ("topk", Aggregation("topk", 10)), ("topk:3", Aggregation("topk", 3))])
def test_parse_aggregate(text, expected):
    assert parse_aggregate(text) == expected


@pytest.mark.parametrize("text", ["median", "topk:0", "topk:x", "max:3"])
def test_parse_aggregate_rejects_unknown_forms(text):
    with pytest.raises(ValueError, match="topk:K"):
        parse_aggregate(text)


@pytest.mark.parametrize("size, stride, seed", [(4, 4, 0), (4, 2, 1), (6, 2, 2), (5, 3, 3)])
def test_vectorised_assembly_equals_monai_avg_merger(size, stride, seed):
    from medconv.inference.heatmap import assemble_heatmap_monai

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(0, 40, stride), np.arange(0, 30, stride)), -1).reshape(-1, 2)
    coords = grid[rng.random(len(grid)) < 0.7] + rng.integers(0, 2, (1, 2))  # some tiles missing, off the cell grid
    scores = rng.dirichlet([1, 1, 1], size=len(coords))
    ds = heatmap_downsample(size, stride, 42, 33)
    shape = heatmap_shape(42, 33, ds)
    heat, counts = assemble_heatmap(coords, scores, size, ds, shape)
    ref, ref_counts = assemble_heatmap_monai(coords, scores, size, ds, shape)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(heat, ref, rtol=1e-5, equal_nan=True)
    assert np.isnan(heat).any() and counts.max() > (1 if size > stride else 0)
