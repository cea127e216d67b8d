"""Tile one slide: tissue mask once, grid at the target mpp, coords store + mask + QC image.

Outputs per slide in the output folder: `<name>.h5` (written last, so its presence with the
`complete` flag and matching parameters means the slide is done), `<name>_mask.png`, `<name>_qc.png`.
"""

from __future__ import annotations

import glob
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medconv.errors import InputFileError, MedconvError
from medconv.io.png import write_mask_png, write_png
from medconv.tiling import coords_store
from medconv.tiling.geometry import grid_in_mask, plan_tiles
from medconv.tiling.qc import qc_overlay
from medconv.tiling.tissue import tissue_mask

#: enclosed glass up to this area (mm^2) is filled into the tissue mask
MAX_HOLE_MM2 = 0.01
#: parameters that, when changed, make an existing coords store stale
PARAM_KEYS = ("tile_size", "target_mpp", "overlap", "min_tissue")


@dataclass(frozen=True)
class TileOptions:
    target_mpp: float = 0.5
    tile_size: int = 256
    overlap: int = 0
    min_tissue: float = 0.25
    slide_mpp: float | None = None  # overrides the file's metadata when given
    mask_mpp: float = 4.0  # resolution of the tissue mask (um/px), never finer than level 0
    overwrite: bool = False


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"h5": out_dir / f"{name}.h5", "mask": out_dir / f"{name}_mask.png", "qc": out_dir / f"{name}_qc.png"}


def finished(out_dir: Path, name: str, options: TileOptions, path: Path | None = None) -> dict[str, Any] | None:
    """Attributes of a complete store made with the same parameters (from the same, unchanged slide file
    `path` when given), else None (redo the slide)."""
    paths = output_paths(out_dir, name)
    if not all(p.exists() for p in paths.values()) or not coords_store.is_complete(paths["h5"]):
        return None
    try:
        _, attrs = coords_store.read_coords(paths["h5"])
    except MedconvError:
        return None
    wanted = asdict(options)
    for key in PARAM_KEYS:
        if key not in attrs or not np.isclose(float(attrs[key]), float(wanted[key])):
            return None
    if options.slide_mpp is not None and not np.isclose(float(attrs.get("slide_mpp", -1)), options.slide_mpp):
        return None
    if path is not None and "source_size" in attrs:
        size, mtime_ns = source_fingerprint(path)
        if int(attrs["source_size"]) != size or int(attrs.get("source_mtime_ns", -1)) != mtime_ns:
            return None
    return attrs


def source_fingerprint(path: Path) -> tuple[int, int]:
    """Size and modification time of the slide file: a slide rewritten in place (a regenerated demo slide,
    a re-exported scan) must be re-tiled, not matched with coords from its old pixels."""
    try:
        st = Path(path).stat()
    except OSError:
        return -1, -1
    return int(st.st_size), int(st.st_mtime_ns)


def tile_slide(path: Path, out_dir: Path, name: str, options: TileOptions) -> dict[str, Any]:
    """Tile one slide (or skip it when done); returns its summary row. Raises on any failure."""
    start = time.perf_counter()
    row: dict[str, Any] = {"slide": name, "path": str(path)}
    if not options.overwrite and (attrs := finished(out_dir, name, options, path)) is not None:
        return row | {"status": "skipped", "n_tiles": attrs.get("n_tiles"), "tissue_mm2": attrs.get("tissue_mm2"),
                      "mpp": attrs.get("slide_mpp"), "seconds": round(time.perf_counter() - start, 3), "error": ""}
    from medconv.io.slide import open_slide

    _remove_stale_temps(out_dir, name)
    source_size, source_mtime_ns = source_fingerprint(path)  # before reading, so a concurrent rewrite shows
    reader = open_slide(path, mpp=options.slide_mpp)
    try:
        if reader.mpp is None:
            what = getattr(reader, "description", "") or "the slide"  # a plain image says what it is
            note = f" ({reader.mpp_note})" if getattr(reader, "mpp_note", "") else ""
            one_level = " to tile it as a one-level slide" if getattr(reader, "description", "") else ""
            raise InputFileError(
                f"{path}: {what} has no microns-per-pixel metadata{note}; pass --slide-mpp{one_level} "
                "(e.g. 0.25 for a 40x scan, 0.5 for 20x) if you know it. medconv never guesses."
            )
        try:
            plan = plan_tiles(reader.level_downsamples, reader.mpp, options.target_mpp, options.tile_size, options.overlap)
        except ValueError as err:
            raise InputFileError(f"{path}: {err}") from err
        width, height = reader.dimensions
        thumb, mask, mask_ds = _tissue(reader, options.mask_mpp)
        positions, fractions = grid_in_mask(
            width, height, plan.patch_size_level0, plan.stride_level0, mask, mask_ds, options.min_tissue
        )
    finally:
        reader.close()
    paths = output_paths(out_dir, name)
    tissue_mm2 = float(mask.sum()) * (mask_ds * reader.mpp) ** 2 / 1e6
    write_mask_png(paths["mask"], mask, mask_ds)
    # the text chunk marks it as ours, so a later `medconv tile` over this folder does not take it for a slide
    write_png(paths["qc"], qc_overlay(thumb, mask_ds, mask, positions, plan.patch_size_level0), {"medconv.kind": "qc"})
    level_dim = tuple(int(v) for v in reader.level_dimensions[plan.level])
    attrs = {
        # CLAM
        "patch_size": plan.read_size,
        "patch_level": plan.level,
        "downsample": (plan.level_downsample, plan.level_downsample),
        "level_dim": level_dim,
        "downsampled_level_dim": level_dim,
        "name": name,
        "save_path": str(out_dir),
        # TRIDENT
        "patch_size_level0": plan.patch_size_level0,
        "level0_magnification": 10.0 / reader.mpp,
        "target_magnification": 10.0 / options.target_mpp,
        "overlap": options.overlap,
        "savetodir": str(out_dir),
        # medconv
        "tile_size": options.tile_size,
        "target_mpp": options.target_mpp,
        "slide_mpp": float(reader.mpp),
        "level": plan.level,
        "level_downsample": plan.level_downsample,
        "read_size": plan.read_size,
        "stride_level0": plan.stride_level0,
        "target_downsample": plan.target_downsample,
        "min_tissue": options.min_tissue,
        "source_path": str(Path(path).resolve()),
        "source_size": source_size,
        "source_mtime_ns": source_mtime_ns,
        "slide_width": int(width),
        "slide_height": int(height),
        "mask_path": paths["mask"].name,
        "mask_downsample": mask_ds,
        "n_tiles": int(len(positions)),
        "tissue_mm2": tissue_mm2,
        "edge": "drop",
    }
    coords_store.write_coords(paths["h5"], positions, attrs, extra={"tissue_fraction": fractions.astype(np.float32)})
    return row | {"status": "ok", "n_tiles": int(len(positions)), "tissue_mm2": round(tissue_mm2, 4),
                  "mpp": float(reader.mpp), "seconds": round(time.perf_counter() - start, 3), "error": ""}


def _remove_stale_temps(out_dir: Path, name: str) -> None:
    """Temp files left by an interrupted run of this slide (the slide is being redone): `atomic.temp_name`'s
    `.<stem>.<pid>.tmp<suffix>` and the `.<name>.<pid>.tmp` that medconv wrote before."""
    for path in output_paths(out_dir, name).values():
        patterns = (glob.escape(f".{path.stem}.") + "*.tmp" + glob.escape(path.suffix), glob.escape(f".{path.name}.") + "*.tmp")
        for pattern in patterns:
            for tmp in out_dir.glob(pattern):
                tmp.unlink(missing_ok=True)


def _tissue(reader: Any, mask_mpp: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Thumbnail near `mask_mpp`, its tissue mask and its downsample (level-0 px per mask px)."""
    width, height = reader.dimensions
    ds = max(1.0, mask_mpp / reader.mpp)
    ds = max(ds, max(width, height) / 16384)  # keep the mask in memory for any slide
    thumb = reader.get_thumbnail((max(1, round(width / ds)), max(1, round(height / ds))))
    mask_ds = width / thumb.shape[1]
    mask_um = mask_ds * reader.mpp
    mask = tissue_mask(
        thumb,
        min_object_px=max(4, round(20000 / mask_um**2)),  # 0.02 mm^2
        # holes up to 0.01 mm^2 (lumens, fat cells; ~110 um across) count as tissue; larger ones stay glass,
        # as filling them only adds glass-only tiles (their rims are kept by min_tissue anyway)
        max_hole_px=round(MAX_HOLE_MM2 * 1e6 / mask_um**2),
        smooth_px=max(1, round(8 / mask_um)),
    )
    return thumb, mask, float(mask_ds)


def tile_slide_safe(path: str, out_dir: str, name: str, options: TileOptions) -> dict[str, Any]:
    """Process-pool entry: every error becomes a `failed` row, so one bad slide never stops the others."""
    start = time.perf_counter()
    try:
        return tile_slide(Path(path), Path(out_dir), name, options)
    except Exception as err:
        message = str(err) if isinstance(err, MedconvError) else f"{type(err).__name__}: {err}"
        if not isinstance(err, MedconvError):
            frame = traceback.extract_tb(err.__traceback__)[-1]
            message += f" (at {Path(frame.filename).name}:{frame.lineno})"
        return {"slide": name, "path": path, "status": "failed", "n_tiles": 0, "tissue_mm2": None, "mpp": None,
                "seconds": round(time.perf_counter() - start, 3), "error": message}
