"""Annotation parsing (ASAP XML, QuPath GeoJSON) and tile labels from polygons and masks, on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medconv.errors import InputFileError
from medconv.io.annotations import (
    polygon_fractions,
    rasterize,
    read_annotations,
    tumour_region,
)
from medconv.tiling.geometry import mask_fractions

ASAP = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="100" Y="100"/>
        <Coordinate Order="0" X="0" Y="0"/>
        <Coordinate Order="1" X="100" Y="0"/>
        <Coordinate Order="3" X="0" Y="100"/>
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0"/>
        <Coordinate Order="1" X="50" Y="0"/>
        <Coordinate Order="2" X="50" Y="50"/>
        <Coordinate Order="3" X="0" Y="50"/>
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 2" Type="Dot" PartOfGroup="Tumor">
      <Coordinates><Coordinate Order="0" X="5" Y="5"/></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups><Group Name="Tumor" PartOfGroup="None"/></AnnotationGroups>
</ASAP_Annotations>
"""


def _square(x0, y0, s):
    return [[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s], [x0, y0]]


def test_asap_xml_orders_coordinates_and_subtracts_exclusions(tmp_path):
    path = tmp_path / "tumor_001.xml"
    path.write_text(ASAP)
    anns = read_annotations(path)
    assert [a.name for a in anns] == ["Tumor", "_2"]  # the dot encloses no area
    assert anns[0].geometry.area == pytest.approx(100 * 100)  # Order sorted: a square, not a bow tie
    region = tumour_region(anns)
    assert region.area == pytest.approx(100 * 100 - 50 * 50)


def test_geojson_feature_collection_and_list(tmp_path):
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 10)]},
         "properties": {"classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon",
                                         "coordinates": [[_square(20, 0, 10)], [_square(40, 0, 10)]]},
         "properties": {"classification": "Tumor"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 5)]},
         "properties": {"classification": {"name": "Exclusion"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},
    ]
    a = tmp_path / "a.geojson"
    a.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps(features))
    for path in (a, b):
        anns = read_annotations(path)
        assert [x.name for x in anns] == ["Tumor", "Tumor", "Exclusion"]
        assert tumour_region(anns).area == pytest.approx(300 - 25)


def test_bad_annotation_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(InputFileError, match="broken.xml"):
        read_annotations(bad)
    with pytest.raises(InputFileError, match="not found"):
        read_annotations(tmp_path / "missing.geojson")


def test_polygon_fractions_of_tiles(tmp_path):
    path = tmp_path / "t.xml"
    path.write_text(ASAP)
    region = tumour_region(read_annotations(path))  # 100x100 square minus its top-left 50x50 quarter
    coords = np.array([[0, 0], [50, 0], [50, 50], [25, 25], [200, 200], [75, 75]])
    got = polygon_fractions(region, coords, size_level0=50)
    np.testing.assert_allclose(got, [0.0, 1.0, 1.0, 0.75, 0.0, 0.25])


def test_mask_fractions_of_tiles():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:6, 2:6] = 255  # level-0 square [16, 48) at downsample 8
    coords = np.array([[16, 16], [0, 0], [32, 32], [40, 40], [72, 72]])
    got = mask_fractions(coords, 16, mask, mask_downsample=8)
    np.testing.assert_allclose(got, [1.0, 0.0, 1.0, 0.25, 0.0])
    # a tile hanging over the mask's edge counts the outside as background
    np.testing.assert_allclose(mask_fractions(np.array([[-8, 16], [24, 24]]), 16, np.ones((4, 4)), 8), [0.5, 0.25])


def test_rasterize_keeps_holes_and_islands():
    from shapely.geometry import Polygon

    outer = Polygon(_square(0, 0, 80)[:-1], holes=[_square(16, 16, 48)[:-1]])
    island = Polygon(_square(32, 32, 16)[:-1])
    mask = rasterize(outer.union(island), (12, 12), downsample=8)
    assert mask[0, 0] and mask[9, 9] and not mask[10, 10]  # outer ring, up to its edge
    assert not mask[3, 3]  # the hole
    assert mask[5, 5]  # the island inside the hole


def test_rasterized_region_gives_the_polygon_labels(tmp_path):
    path = tmp_path / "t.xml"
    path.write_text(ASAP)
    region = tumour_region(read_annotations(path))
    coords = np.array([[0, 0], [50, 0], [50, 50], [25, 25], [200, 200], [75, 75]])
    mask = rasterize(region, (40, 40), downsample=5)
    np.testing.assert_allclose(mask_fractions(coords, 50, mask, 5), polygon_fractions(region, coords, 50))


def test_self_intersecting_outline_keeps_its_area(tmp_path):
    bow_tie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]  # two triangles of 25 px^2 each
    path = tmp_path / "bow.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
                                "geometry": {"type": "Polygon", "coordinates": [bow_tie]}}))
    region = tumour_region(read_annotations(path))
    assert region.is_valid and region.area == pytest.approx(50)
