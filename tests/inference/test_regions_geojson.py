"""Threshold regions and QuPath GeoJSON: valid closed polygons inside the slide, areas in mm², numeric measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import box, shape

from medconv.inference.geojson import region_features, tile_features, write_geojson
from medconv.inference.regions import threshold_regions


def _ring_closed(geometry: dict) -> bool:
    return all(ring[0] == ring[-1] and len(ring) >= 4 for ring in geometry["coordinates"])


def test_regions_are_the_connected_cells_above_threshold_with_their_area():
    heat = np.full((4, 5), np.nan)
    heat[0, 0:2] = 0.9  # region A: 2 cells
    heat[2:4, 2:5] = [[0.7, 0.8, 0.2], [0.6, 0.95, 0.3]]  # region B: 4 cells >= 0.5 (a 2x2 block)
    heat[0, 4] = 0.4  # below threshold
    regions = threshold_regions(heat, 0.5, downsample=100, slide_size=(480, 400), mpp=0.5)
    assert [r.n_cells for r in regions] == [4, 2]
    big = regions[0]
    assert big.polygon.equals(box(200, 200, 400, 400))
    assert big.area_mm2 == pytest.approx(200 * 200 * 0.25 / 1e6)
    assert big.max_score == pytest.approx(0.95) and big.mean_score == pytest.approx((0.7 + 0.8 + 0.6 + 0.95) / 4)


def test_region_with_a_hole_and_clipping_to_the_slide():
    heat = np.ones((3, 3))
    heat[1, 1] = 0.0
    (region,) = threshold_regions(heat, 0.5, downsample=10, slide_size=(25, 30), mpp=1.0)
    assert region.polygon.is_valid and len(region.polygon.interiors) == 1
    assert region.polygon.bounds == (0.0, 0.0, 25.0, 30.0)  # the last column is clipped at the slide's width
    assert region.area_mm2 == pytest.approx((25 * 30 - 100) / 1e6)


def test_corner_touching_cells_are_separate_regions():
    heat = np.array([[1.0, 0.0], [0.0, 1.0]])
    regions = threshold_regions(heat, 0.5, 1, (2, 2), 1.0)
    assert len(regions) == 2 and all(r.polygon.is_valid for r in regions)


def test_geojson_features_are_valid_closed_inside_the_slide_and_numeric(tmp_path):
    width, height = 300, 250
    coords = np.array([[0, 0], [100, 0], [200, 150]])
    scores = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    tiles = tile_features(coords, scores, 128, ["normal", "tumor"], slide_size=(width, height))
    heat = np.array([[0.8, 0.1, np.nan], [np.nan, np.nan, 0.6], [np.nan, np.nan, 0.6]])
    regions = region_features(threshold_regions(heat, 0.5, 100, (width, height), 0.5), "tumor", 1, 2, 0.5)
    path = write_geojson(tmp_path / "s.geojson", tiles + regions)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 5
    slide = box(0, 0, width, height)
    for feature in data["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and not geometry.is_empty
        assert _ring_closed(feature["geometry"])
        assert slide.contains(geometry)
        assert all(isinstance(v, float) for v in feature["properties"]["measurements"].values())
    kinds = [f["properties"]["objectType"] for f in data["features"]]
    assert kinds == ["tile"] * 3 + ["annotation"] * 2
    first = data["features"][0]["properties"]
    assert first["measurements"] == {"prob_normal": 0.2, "prob_tumor": 0.8}
    assert first["classification"]["name"] == "tumor"
    # the clipped third tile ends at the slide edge; the tumour annotation's area is recorded in mm^2
    assert shape(data["features"][2]["geometry"]).bounds == (200, 150, 300, 250)
    areas = sorted(f["properties"]["measurements"]["area_mm2"] for f in data["features"][3:])
    assert areas == pytest.approx([100 * 100 * 0.25 / 1e6, 100 * 150 * 0.25 / 1e6])
