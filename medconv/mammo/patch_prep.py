"""Mammograms into patch plans: resample to a physical pixel size, orient, cache, and place labelled patches.

Each image is resampled once to `spacing_mm` mm/px, turned chest wall left (as the whole-image pipeline
does) and cached as 16-bit .npy, so training reads patches as memory-mapped crops. Patches are a grid
inside the breast plus lesion-centred positives. A patch is positive when it covers at least `min_overlap`
of a lesion (or a lesion covers that much of it): overlap = lesion pixels in the patch / min(lesion area,
patch area), so a 2 mm calcification and a 40 mm mass are judged alike.

`prepare_all` runs on threads, never on forked processes: a datamodule is set up inside a process whose
torch and OpenCV thread pools are running, and a forked child that touches OpenCV's pool
(`cv2.setNumThreads`) waits forever on a lock held by a thread that does not exist in the child.
Decoding and resizing release the GIL, so threads still overlap the heavy part.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from medconv.errors import InputFileError
from medconv.io.atomic import save_npy
from medconv.tiling.geometry import grid_in_mask, mask_fractions

PREP_VERSION = 1
UNLABELLED = -1


@dataclass(frozen=True)
class PatchOptions:
    """Where patches go and how they are labelled (sizes in pixels at `spacing_mm`)."""

    spacing_mm: float = 0.2
    patch_size: int = 224
    overlap: float = 0.0  # grid overlap as a fraction of the patch size
    min_breast: float = 0.5  # grid patches need this much breast
    lesion_patches: int = 8  # lesion-centred patches per lesion
    jitter: float = 0.25  # lesion centre moves up to this fraction of the patch from the patch centre
    min_overlap: float = 0.5
    drop_ambiguous: bool = True  # patches touching a lesion below min_overlap are left out


# --- pure geometry --------------------------------------------------------------------------------
def boxes_mask(boxes: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of [x0, y0, x1, y1] boxes (x1, y1 exclusive)."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, int(np.floor(y0))) : int(np.ceil(y1)), max(0, int(np.floor(x0))) : int(np.ceil(x1))] = True
    return mask


def lesion_centred_positions(
    lesion: np.ndarray, size: int, per_lesion: int, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """Top-left corners of patches centred on each lesion's centroid (± jitter * size), kept inside the image."""
    labels, n = ndimage.label(lesion)
    if n == 0 or per_lesion <= 0:
        return np.zeros((0, 2), np.int64)
    h, w = lesion.shape
    centres = np.asarray(ndimage.center_of_mass(lesion, labels, range(1, n + 1)))[:, ::-1] + 0.5  # (x, y), pixel edges
    centres = np.repeat(centres, per_lesion, axis=0)
    offsets = rng.uniform(-jitter, jitter, centres.shape) * size
    offsets[::per_lesion] = 0  # the first patch of each lesion is exactly centred
    tl = np.round(centres + offsets - size / 2)
    tl[:, 0] = tl[:, 0].clip(0, max(0, w - size))
    tl[:, 1] = tl[:, 1].clip(0, max(0, h - size))
    return tl.astype(np.int64)


def lesion_overlaps(positions: np.ndarray, size: int, lesion: np.ndarray) -> np.ndarray:
    """Per patch, max over lesions of (lesion px in patch) / min(lesion area, patch area)."""
    out = np.zeros(len(positions))
    labels, n = ndimage.label(lesion)
    for k in range(1, n + 1):
        component = labels == k
        covered = mask_fractions(positions, size, component, 1.0) * size * size
        out = np.maximum(out, covered / min(float(component.sum()), float(size * size)))
    return out.clip(0, 1)


def plan_patches(
    breast: np.ndarray, lesion: np.ndarray | None, options: PatchOptions, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid patches inside the breast + lesion-centred patches: positions (N, 2), labels (N,), overlaps (N,).

    Label 1 when overlap >= min_overlap, 0 when the patch touches no lesion, else UNLABELLED (or 0 when
    not `drop_ambiguous`).
    """
    h, w = breast.shape
    size = options.patch_size
    stride = max(1.0, size * (1 - options.overlap))
    grid, _ = grid_in_mask(w, h, size, stride, breast, 1.0, options.min_breast)
    positions = grid
    if lesion is not None and lesion.any():
        centred = lesion_centred_positions(lesion, size, options.lesion_patches, options.jitter, rng)
        positions = np.concatenate([grid, centred]) if len(centred) else grid
    overlaps = lesion_overlaps(positions, size, lesion) if lesion is not None else np.zeros(len(positions))
    labels = (overlaps >= options.min_overlap).astype(np.int64)
    ambiguous = (overlaps > 0) & (overlaps < options.min_overlap)
    labels[ambiguous] = UNLABELLED if options.drop_ambiguous else 0
    return positions.astype(np.int64), labels, overlaps


def parse_boxes(value: str, source: str = "") -> list[list[float]]:
    """The manifest's `boxes`: a JSON list of [x0, y0, x1, y1] in original pixels ("" or "[]" for none)."""
    if not value or not value.strip():
        return []
    try:
        boxes = json.loads(value)
        if not all(len(b) == 4 for b in boxes):
            raise ValueError("each box needs 4 numbers")
        return [[float(v) for v in b] for b in boxes]
    except (ValueError, TypeError) as err:
        raise InputFileError(f"{source}: boxes {value!r} are not a JSON list of [x0, y0, x1, y1] ({err})") from err


# --- one image: resample, orient, cache -------------------------------------------------------------
def prepare_image(
    source: str, spacing_mm: float, given_spacing: float | None = None, default_spacing: float | None = None,
    mask_path: str = "", boxes: str = "", cache_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Path | None]:
    """float32 image in [0, 1] at `spacing_mm`, chest wall left; its lesion mask (or None); its cache file.

    Pixel spacing (mm/px): `given_spacing` (the manifest's) wins, then the file's, then `default_spacing`;
    an image with none of them is an error, never a guess.
    """
    from medconv.io.mammo import read_mammogram
    from medconv.mammo.prep import breast_mask, infer_laterality

    img_path = les_path = None
    if cache_dir:
        key = _cache_key(source, spacing_mm, (given_spacing, default_spacing), mask_path, boxes)
        img_path, les_path = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}_lesion.npy"
        if img_path.exists():
            lesion = np.load(les_path) if les_path.exists() else None
            return np.load(img_path).astype(np.float32) / 65535.0, lesion, img_path
    mammo = read_mammogram(source)
    spacing = (given_spacing, given_spacing) if given_spacing else mammo.pixel_spacing_mm
    if not spacing and default_spacing:
        spacing = (default_spacing, default_spacing)
    if not spacing:
        raise InputFileError(
            f"{source}: no pixel spacing in the file; add a pixel_spacing_mm column to the manifest "
            "(or set data.init_args.pixel_spacing_mm) — patches are cut at a physical size"
        )
    pixels = mammo.pixels
    lesion = None
    if mask_path:
        from medconv.io.png import read_mask_png

        lesion, _ = read_mask_png(mask_path)
        if lesion.shape != pixels.shape:
            raise InputFileError(
                f"{mask_path}: mask is {lesion.shape[::-1]} px but {source} is {pixels.shape[::-1]}; masks must match their image"
            )
    elif parse_boxes(boxes, source):
        lesion = boxes_mask(parse_boxes(boxes, source), pixels.shape)
    if infer_laterality(pixels, breast_mask(pixels)) == "R":
        pixels = pixels[:, ::-1]
        lesion = None if lesion is None else lesion[:, ::-1]
    fy, fx = spacing[0] / spacing_mm, spacing[1] / spacing_mm
    size = (max(1, round(pixels.shape[1] * fx)), max(1, round(pixels.shape[0] * fy)))
    image = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA if fx < 1 else cv2.INTER_LINEAR)
    if lesion is not None:
        lesion = cv2.resize(lesion.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    if cache_dir:
        save_npy(img_path, np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16))
        if lesion is not None:
            save_npy(les_path, lesion)
    return image.astype(np.float32), lesion, img_path


def _cache_key(source: str, spacing_mm: float, fallback: object, mask_path: str, boxes: str) -> str:
    st = os.stat(source)
    mask_id = f"{mask_path}|{os.stat(mask_path).st_mtime_ns}" if mask_path else boxes
    ident = f"{Path(source).resolve()}|{st.st_size}|{st.st_mtime_ns}|{spacing_mm}|{fallback}|{mask_id}|{PREP_VERSION}"
    return "patch_" + hashlib.sha1(ident.encode()).hexdigest()


def image_patches(
    row: dict, options: PatchOptions, default_spacing: float | None, cache_dir: str | None, seed: int,
    root: str | None = None,
) -> dict:
    """Prepare one manifest row and plan its patches; errors come back as a message (collected by the caller).

    The random draw (lesion-patch jitter) depends only on the seed and the image's path relative to `root`
    (the manifest's folder): the same whatever the order or number of workers, or where the data set lives.
    """
    from medconv.mammo.prep import breast_mask

    try:
        given = row.get("pixel_spacing_mm")
        try:
            given = float(given) if given not in (None, "") else None
        except ValueError:
            raise InputFileError(f"{row['image_path']}: pixel_spacing_mm {given!r} is not a number (mm per pixel)") from None
        image, lesion, cached = prepare_image(row["image_path"], options.spacing_mm, given, default_spacing,
                                              row.get("mask_path", ""), row.get("boxes", ""), cache_dir)
    except InputFileError as err:
        return {"error": str(err)}
    name = os.path.relpath(row["image_path"], root) if root else str(row["image_path"])
    rng = np.random.default_rng([seed, int(hashlib.sha1(Path(name).as_posix().encode()).hexdigest()[:8], 16)])
    positions, labels, overlaps = plan_patches(breast_mask(image), lesion, options, rng)
    source = str(cached) if cached is not None else image  # dataset workers memory-map the cache file
    return {"source": source, "positions": positions, "labels": labels, "overlaps": overlaps}


def prepare_all(
    rows: list[dict], options: PatchOptions, default_spacing: float | None, cache_dir: str | None, seed: int,
    workers: int = 0, root: str | None = None,
) -> list[dict]:
    """`image_patches` for every row, in row order, on `workers` threads (0: in this thread)."""
    n = len(rows)
    args = (rows, [options] * n, [default_spacing] * n, [cache_dir] * n, [seed] * n, [root] * n)
    if workers <= 0 or n < 2:
        return list(map(image_patches, *args))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medconv-patch-prep") as pool:
        return list(pool.map(image_patches, *args))
