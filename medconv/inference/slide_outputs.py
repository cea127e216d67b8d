"""Per-slide inference outputs: `<slide>.h5` (coords, scores, heatmap), `<slide>_heatmap.png`, `<slide>.geojson`.

The PNG and GeoJSON are written first and the h5 last, each atomically, so a slide whose h5 exists with
its `complete` flag (and the same model and tiling parameters) is finished; anything else is redone.
The h5 keeps the coords store's attributes on `coords` (CLAM/TRIDENT read it like a `medconv tile` store).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medconv.inference.geojson import region_features, tile_features, write_geojson
from medconv.inference.heatmap import Aggregation, aggregate_scores, assemble_heatmap, heatmap_downsample, heatmap_shape
from medconv.inference.overlay import OVERLAY_SIDE, render_overlay
from medconv.inference.regions import threshold_regions
from medconv.io.atomic import atomic_path
from medconv.tiling.coords_store import is_complete, plain_attr

FORMAT = "medconv-scores/1"
#: h5 attributes that must match for a slide to count as done (model, tiling, source file)
RUN_KEYS = ("model", "tile_size", "target_mpp", "source_size", "source_mtime_ns")


@dataclass(frozen=True)
class SlideSettings:
    """What shapes one slide's outputs beyond the model's scores."""

    classes: tuple[str, ...]
    positive: int  # index of the class the heatmap, regions and `score` are about
    aggregate: Aggregation
    threshold: float


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"png": out_dir / f"{name}_heatmap.png", "geojson": out_dir / f"{name}.geojson", "h5": out_dir / f"{name}.h5"}


def finished(out_dir: Path, name: str, run: dict[str, Any]) -> dict[str, Any] | None:
    """File attributes of a complete h5 made with the same `run` parameters (all outputs present), else None."""
    paths = output_paths(out_dir, name)
    if not all(p.exists() for p in paths.values()) or not is_complete(paths["h5"]):
        return None
    try:
        with h5py.File(paths["h5"], "r") as f:
            attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
    except OSError:
        return None
    for key in RUN_KEYS:
        if key in run and str(attrs.get(key)) != str(run[key]):
            return None
    return attrs


def read_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """coords (N, 2), scores (N, C), the coords attributes and the file attributes of an inference h5."""
    with h5py.File(path, "r") as f:
        coords = np.asarray(f["coords"][()], dtype=np.int64).reshape(-1, 2)
        scores = np.asarray(f["scores"][()], dtype=np.float32)
        coords_attrs = {k: plain_attr(v) for k, v in f["coords"].attrs.items()}
        file_attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
    return coords, scores, coords_attrs, file_attrs


def read_heatmap(path: str | Path) -> tuple[np.ndarray, float]:
    """(C, H, W) heatmap and its downsample (level-0 px per cell)."""
    with h5py.File(path, "r") as f:
        return np.asarray(f["heatmap"][()]), float(f["heatmap"].attrs["downsample"])


def write_slide_outputs(out_dir: Path, name: str, coords: np.ndarray, scores: np.ndarray, store_attrs: dict[str, Any],
                        settings: SlideSettings, run: dict[str, Any], thumbnail: np.ndarray | None, *,
                        slide_scores: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None,
                        map_label: str | None = None, measurements: dict[str, np.ndarray] | None = None,
                        map_measure: str = "prob",
                        ) -> dict[str, Any]:
    """Heatmap, regions, PNG, GeoJSON, then the h5; returns the slide's scores for the summary.

    For models whose slide score is not an aggregate of tile scores (MIL): `slide_scores` (C,) are the model's
    (the h5's `aggregate` is then "model"), `extra` are more per-tile h5 datasets (raw attention, ...),
    `map_label` says what the map in `scores[:, positive]` is (colour bar, title, h5 attribute `map`), and
    `measurements` replace the class probabilities of the GeoJSON tiles, which are then classified as the
    positive class where the map reaches the threshold; `map_measure` names the map in the regions' max/mean
    measurements (`max_prob` for probabilities).
    """
    remove_stale_temps(out_dir, name)
    paths = output_paths(out_dir, name)
    width, height = int(store_attrs["slide_width"]), int(store_attrs["slide_height"])
    mpp = float(store_attrs["slide_mpp"])
    size0 = float(store_attrs["patch_size_level0"])
    stride0 = float(store_attrs.get("stride_level0") or size0)
    ds = heatmap_downsample(size0, stride0, width, height)
    heat, counts = assemble_heatmap(coords, scores, size0, ds, heatmap_shape(width, height, ds))
    positive = settings.classes[settings.positive]
    regions = threshold_regions(heat[settings.positive], settings.threshold, ds, (width, height), mpp)
    how = str(settings.aggregate) if slide_scores is None else "model"
    if slide_scores is None:
        slide_scores = aggregate_scores(scores.reshape(len(coords), len(settings.classes)), settings.aggregate)
    slide_scores = np.asarray(slide_scores, np.float64).reshape(len(settings.classes))
    score = float(slide_scores[settings.positive])
    title = f"{name}: {positive} score {score:.3f} ({how}), {len(coords)} tiles" + (f"; map: {map_label}" if map_label else "")
    if thumbnail is None:
        thumbnail = np.full((max(1, round(height / ds)), max(1, round(width / ds)), 3), 255, np.uint8)
    cover = (heat.shape[2] * ds / width, heat.shape[1] * ds / height)
    render_overlay(paths["png"], thumbnail, heat[settings.positive], positive, title, cover, label=map_label)
    predicted = None if measurements is None else \
        np.where(np.asarray(scores).reshape(len(coords), -1)[:, settings.positive] >= settings.threshold, settings.positive, -1)
    features = tile_features(coords, scores, size0, settings.classes, (width, height), measurements, predicted)
    features += region_features(regions, positive, settings.positive, len(settings.classes), settings.threshold,
                                map_label or "p", map_measure)
    write_geojson(paths["geojson"], features)
    file_attrs = {
        "format": FORMAT,
        "classes": json.dumps(list(settings.classes)),
        "positive_class": positive,
        "aggregate": how,
        **({"map": map_label} if map_label else {}),
        "threshold": settings.threshold,
        "slide_scores": slide_scores.astype(np.float64),
        "score": score,
        "n_regions": len(regions),
        "region_area_mm2": float(sum(r.area_mm2 for r in regions)),
        **{k: v for k, v in run.items() if v is not None},
    }
    with atomic_path(paths["h5"]) as tmp, h5py.File(tmp, "w") as f:
        dset = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        for key, value in store_attrs.items():
            if value is not None:
                dset.attrs[key] = np.asarray(value) if isinstance(value, (list, tuple)) else value
        f.create_dataset("scores", data=np.asarray(scores, np.float32).reshape(len(coords), -1))
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=np.asarray(value, np.float32))
        hm = f.create_dataset("heatmap", data=heat, compression="gzip", compression_opts=4)
        hm.attrs["downsample"] = ds
        hm.attrs["classes"] = json.dumps(list(settings.classes))
        f.create_dataset("heatmap_count", data=counts.astype(np.uint16), compression="gzip", compression_opts=4)
        for key, value in file_attrs.items():
            f.attrs[key] = value
        f.attrs["complete"] = True
    return {"score": score, "predicted_class": predicted_class(slide_scores, settings),
            **{f"score_{c}": float(v) for c, v in zip(settings.classes, slide_scores, strict=True)},
            "n_regions": len(regions)}


def predicted_class(slide_scores: np.ndarray, settings: SlideSettings) -> str:
    """Two classes: the positive one when its score reaches the threshold; more: the highest score."""
    if np.isnan(slide_scores).all():
        return ""
    if len(settings.classes) == 2:
        return settings.classes[settings.positive] if slide_scores[settings.positive] >= settings.threshold \
            else settings.classes[1 - settings.positive]
    return settings.classes[int(np.nanargmax(slide_scores))]


def thumbnail_for(reader: Any) -> np.ndarray:
    """The whole slide, at most OVERLAY_SIDE pixels on its longer side."""
    width, height = reader.dimensions
    scale = min(1.0, OVERLAY_SIDE / max(width, height))
    return reader.get_thumbnail((max(1, round(width * scale)), max(1, round(height * scale))))


def remove_stale_temps(out_dir: Path, name: str) -> None:
    """Temp files an interrupted run left for this slide (see `medconv.io.atomic.temp_name`)."""
    for path in output_paths(out_dir, name).values():
        for tmp in out_dir.glob(glob.escape(f".{path.stem}.") + "*.tmp" + glob.escape(path.suffix)):
            tmp.unlink(missing_ok=True)
