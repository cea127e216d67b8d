"""Slide annotations (ASAP/CAMELYON16 XML, QuPath GeoJSON) as level-0 polygons, and tile labels from them.

Polygons stay in level-0 pixels, like coords stores, so a tile's label is the fraction of its level-0
box inside "tumour minus exclusions" — no rasterising at some arbitrary scale in between. Masks (PNG at a
known downsample) answer the same question through `medconv.tiling.geometry.mask_fractions`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from medconv.errors import InputFileError

# CAMELYON16 groups: "Tumor", "_0", "_1" are tumour; "_2" marks non-tumour holes inside tumour regions.
POSITIVE_GROUPS = ("tumor", "tumour", "_0", "_1", "metastasis", "metastases")
EXCLUSION_GROUPS = ("_2", "exclusion", "exclude", "ignore")


@dataclass(frozen=True)
class Annotation:
    """One annotated region in level-0 pixels; `name` is its class (ASAP group, QuPath classification)."""

    geometry: BaseGeometry  # Polygon or MultiPolygon
    name: str


def read_annotations(path: str | Path) -> list[Annotation]:
    """ASAP XML (`.xml`) or QuPath GeoJSON (`.geojson`, `.json`), by suffix."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: annotation file not found; check the manifest's annotation_path.")
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_asap_xml(path)
    if suffix in (".geojson", ".json"):
        return read_geojson(path)
    raise InputFileError(f"{path}: unknown annotation format; use ASAP .xml or QuPath .geojson.")


def read_asap_xml(path: str | Path) -> list[Annotation]:
    """`<Annotation PartOfGroup=... Type="Polygon"><Coordinates><Coordinate Order X Y/>` -> polygons."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise InputFileError(f"{path}: not valid XML ({err}); re-export it from ASAP.") from err
    out = []
    for ann in root.iter("Annotation"):
        kind = (ann.get("Type") or "Polygon").lower()
        if kind not in ("polygon", "spline", "rectangle"):
            continue  # dots and lines enclose no area
        coords = sorted(
            ((int(float(c.get("Order", i))), float(c.get("X")), float(c.get("Y"))) for i, c in enumerate(ann.iter("Coordinate"))),
            key=lambda t: t[0],
        )
        if len(coords) < 3:
            continue
        geom = _valid(Polygon([(x, y) for _, x, y in coords]))
        if not geom.is_empty:
            out.append(Annotation(geom, ann.get("PartOfGroup") or ann.get("Name") or ""))
    return out


def read_geojson(path: str | Path) -> list[Annotation]:
    """QuPath export: a FeatureCollection, a list of Features, or one Feature; (Multi)Polygons only."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputFileError(f"{path}: not valid JSON ({err}); export it from QuPath as GeoJSON.") from err
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict):
        features = [data]
    else:
        features = data
    out = []
    for feature in features:
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not geometry or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        geom = _valid(shape(geometry))
        if not geom.is_empty:
            out.append(Annotation(geom, _qupath_class(feature.get("properties") or {})))
    return out


def _qupath_class(props: dict) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict):
        return str(cls.get("name", ""))
    if isinstance(cls, str):
        return cls
    return str(props.get("name", ""))


def _valid(geom: BaseGeometry) -> BaseGeometry:
    """Hand-drawn outlines self-intersect; make_valid keeps their area instead of failing later."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, (Polygon, MultiPolygon))]
    return shapely.union_all(polys) if polys else Polygon()


def tumour_region(
    annotations: list[Annotation],
    positive: tuple[str, ...] = POSITIVE_GROUPS,
    exclude: tuple[str, ...] = EXCLUSION_GROUPS,
) -> BaseGeometry:
    """Union of positive regions minus union of exclusion regions (class names compared case-insensitively)."""
    pos = {p.lower() for p in positive}
    exc = {e.lower() for e in exclude}
    keep = [a.geometry for a in annotations if a.name.lower() in pos]
    holes = [a.geometry for a in annotations if a.name.lower() in exc]
    region = shapely.union_all(keep) if keep else Polygon()
    if holes and not region.is_empty:
        region = region.difference(shapely.union_all(holes))
    return region


def polygon_fractions(region: BaseGeometry, coords: np.ndarray, size_level0: float) -> np.ndarray:
    """Fraction of each tile's level-0 box (top-left `coords`, side `size_level0`) inside `region`."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if region.is_empty or len(coords) == 0:
        return np.zeros(len(coords), dtype=np.float32)
    boxes = shapely.box(coords[:, 0], coords[:, 1], coords[:, 0] + size_level0, coords[:, 1] + size_level0)
    shapely.prepare(region)
    hit = shapely.intersects(region, boxes)
    out = np.zeros(len(coords), dtype=np.float32)
    if hit.any():
        out[hit] = shapely.area(shapely.intersection(boxes[hit], region)) / float(size_level0) ** 2
    return out.clip(0.0, 1.0)


def rasterize(region: BaseGeometry, shape_hw: tuple[int, int], downsample: float) -> np.ndarray:
    """Boolean mask (H, W) of `region` at `downsample`: a mask pixel is set when its centre is inside.

    Same geometry as `polygon_fractions`, so masks and polygons give the same tile labels; each
    polygon is tested only over its own bounding box.
    """
    h, w = shape_hw
    out = np.zeros(shape_hw, dtype=bool)
    for poly in getattr(region, "geoms", [region]):
        if poly.is_empty or not isinstance(poly, (Polygon, MultiPolygon)):
            continue
        bx0, by0, bx1, by1 = np.asarray(poly.bounds) / downsample
        c0, r0 = max(int(np.floor(bx0)), 0), max(int(np.floor(by0)), 0)
        c1, r1 = min(int(np.ceil(bx1)), w), min(int(np.ceil(by1)), h)
        if c1 <= c0 or r1 <= r0:
            continue
        xs, ys = np.meshgrid((np.arange(c0, c1) + 0.5) * downsample, (np.arange(r0, r1) + 0.5) * downsample)
        shapely.prepare(poly)
        out[r0:r1, c0:c1] |= shapely.contains_xy(poly, xs, ys)
    return out
