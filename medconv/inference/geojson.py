"""GeoJSON that QuPath imports: tiles as `objectType: "tile"` Features with a `measurements` dict of class
probabilities, regions above the threshold as `annotation` polygons with their area; level-0 pixels.

Plain dicts (json serialises them); validity is checked in the tests with shapely.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon, mapping

from medconv.inference.regions import Region
from medconv.io.atomic import atomic_path

#: QuPath shows a classification in this colour (RGB); the positive (last) class is red
PALETTE = ((40, 120, 200), (220, 40, 40), (40, 170, 80), (230, 160, 20), (150, 60, 190), (30, 180, 180))


def class_colour(index: int, n_classes: int) -> list[int]:
    """Blue for the first class, red for the last of two, then a fixed palette."""
    if n_classes == 2:
        return list(PALETTE[index])
    return list(PALETTE[index % len(PALETTE)])


def tile_features(coords: np.ndarray, scores: np.ndarray, patch_size_level0: float, classes: Sequence[str],
                  slide_size: tuple[int, int] | None = None, measurements: dict[str, np.ndarray] | None = None,
                  predicted: np.ndarray | None = None) -> list[dict]:
    """One Feature per tile: its square (clipped to the slide when `slide_size` is given), the argmax class
    as classification and every class probability as a measurement named `prob_<class>`.

    `measurements` (name -> (N,) numbers) replace the class probabilities, and `predicted` ((N,) class index,
    -1 for none) the argmax: for maps that are not class probabilities (a MIL model's attention).

    Tiles carry no `id` (QuPath assigns one on import; 10^5 UUIDs would cost seconds per slide).
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    scores = np.round(np.asarray(scores, dtype=np.float64).reshape(len(coords), -1), 6)
    size = int(round(patch_size_level0))
    far = coords + size
    if slide_size is not None:
        far = np.minimum(far, np.asarray(slide_size, dtype=np.int64)[None])
    if measurements is None:
        names, values = [f"prob_{c}" for c in classes], scores
    else:
        names = list(measurements)
        values = np.round(np.stack([np.asarray(v, np.float64).reshape(len(coords)) for v in measurements.values()], 1), 6)
    labels = [{"name": c, "color": class_colour(i, len(classes))} for i, c in enumerate(classes)]
    if predicted is None:
        predicted = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=int)
    return [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]]},
            "properties": {"objectType": "tile", **({"classification": labels[cls]} if cls >= 0 else {}),
                           "measurements": dict(zip(names, row, strict=True))},
        }
        for (x, y), (x1, y1), row, cls in zip(coords.tolist(), far.tolist(), values.reshape(len(coords), -1).tolist(),
                                              np.asarray(predicted).tolist(), strict=True)
    ]


def region_features(regions: Sequence[Region], class_name: str, class_index: int, n_classes: int,
                    threshold: float, map_label: str = "p", measure: str = "prob") -> list[dict]:
    """One `annotation` Feature per region: polygon (holes kept), name, classification and measurements
    (area in mm², max and mean of the map inside). `map_label` / `measure` name what was thresholded (a MIL
    model's map is relative attention, not a probability), in the name and the measurement keys."""
    features = []
    for i, region in enumerate(regions, start=1):
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": _geometry(region.polygon),
            "properties": {
                "objectType": "annotation",
                "name": f"{class_name} region {i} ({map_label} >= {threshold:g})",
                "classification": {"name": class_name, "color": class_colour(class_index, n_classes)},
                "isLocked": False,
                "measurements": {
                    "area_mm2": round(region.area_mm2, 6),
                    f"max_{measure}": round(region.max_score, 6),
                    f"mean_{measure}": round(region.mean_score, 6),
                },
            },
        })
    return features


def _geometry(polygon: Polygon) -> dict:
    geometry = mapping(polygon)
    return {"type": geometry["type"], "coordinates": [[list(map(float, pt)) for pt in ring] for ring in geometry["coordinates"]]}


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, features: list[dict]) -> Path:
    """Write a FeatureCollection atomically (compact: a slide has up to ~10^5 tiles)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(feature_collection(features), separators=(",", ":")))
    return path
