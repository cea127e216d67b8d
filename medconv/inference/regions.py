"""Connected heatmap regions above a threshold -> polygons in level-0 pixels with their area in mm².

Each region is the exact union of its cells' squares (shapely), so areas add up to the cells counted and
the rings are valid and closed; cells are joined by edges (4-connectivity), which keeps one region one
polygon (holes allowed). Polygons are clipped to the slide, so their coordinates never leave it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import Polygon, box


@dataclass
class Region:
    """One connected region: its polygon (level-0 px), area in mm², and the scores inside it."""

    polygon: Polygon
    area_mm2: float
    max_score: float
    mean_score: float
    n_cells: int


def threshold_regions(heat: np.ndarray, threshold: float, downsample: float, slide_size: tuple[int, int],
                      mpp: float, min_cells: int = 1) -> list[Region]:
    """Regions of the (H, W) map `heat` (NaN = no tile) with values >= `threshold`, largest first.

    downsample: level-0 px per cell; slide_size: (width, height) level-0; mpp: microns per level-0 px.
    """
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"heat must be a 2-D map, got shape {heat.shape}")
    if mpp <= 0 or downsample <= 0:
        raise ValueError(f"mpp and downsample must be positive, got {mpp}, {downsample}")
    above = np.nan_to_num(heat, nan=-np.inf) >= threshold
    labels, n = ndimage.label(above)  # default structure: 4-connectivity
    bounds = box(0, 0, float(slide_size[0]), float(slide_size[1]))
    regions = []
    for index, cells in enumerate(ndimage.find_objects(labels), start=1):
        if cells is None:
            continue
        rows, cols = np.nonzero(labels[cells] == index)
        if len(rows) < min_cells:
            continue
        rows, cols = rows + cells[0].start, cols + cells[1].start
        squares = shapely.box(cols * downsample, rows * downsample, (cols + 1) * downsample, (rows + 1) * downsample)
        shape = shapely.union_all(squares).intersection(bounds)
        for polygon in _polygons(shape):
            values = heat[rows, cols]
            regions.append(Region(
                polygon=shapely.set_precision(polygon, 0.0) if not polygon.is_valid else polygon,
                area_mm2=float(polygon.area) * mpp**2 / 1e6,
                max_score=float(values.max()),
                mean_score=float(values.mean()),
                n_cells=int(len(rows)),
            ))
    return sorted(regions, key=lambda r: -r.area_mm2)


def _polygons(shape: shapely.Geometry) -> list[Polygon]:
    """The polygon parts of a (multi)geometry; corner-touching leftovers after clipping come as several."""
    if isinstance(shape, Polygon):
        return [] if shape.is_empty else [shapely.geometry.polygon.orient(shape)]
    return [p for g in getattr(shape, "geoms", []) for p in _polygons(g)]
