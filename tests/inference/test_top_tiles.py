"""`top_tiles`: the highest-scoring tiles of a slide, as notebooks/slide_heatmaps lists them."""

from __future__ import annotations

import numpy as np
import pytest

from medconv.inference.heatmap import top_tiles


def test_top_tiles_rank_by_the_positive_class_highest_first_ties_in_order():
    coords = np.array([[0, 0], [100, 0], [200, 0], [300, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.2, 0.8]])
    top = top_tiles(coords, scores, k=3)
    assert top.tolist() == [1, 3, 2]
    assert coords[top].tolist() == [[100, 0], [300, 0], [200, 0]]
    assert top_tiles(coords, scores, k=1, positive=0).tolist() == [0]
    assert len(top_tiles(coords, scores, k=10)) == 4  # fewer tiles than k: all of them


def test_top_tiles_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="coords"):
        top_tiles(np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="k must"):
        top_tiles(np.zeros((2, 2)), np.zeros((2, 2)), k=0)
