"""Mammograms into patches: a grid inside the breast at a physical pixel size, plus lesion-centred positives.

The patch classifier of Shen et al. (2019, "Deep learning to improve breast cancer detection on
screening mammography") is trained on such patches and then initialises the whole-image model; the
same patches feed self-supervised pretraining. Images are resampled once to `spacing_mm` mm/px, turned
chest wall left (as the whole-image pipeline does) and cached as .npy, so patches are memory-mapped
crops. A patch is positive when it covers at least `min_overlap` of a lesion (or a lesion covers that
much of it): overlap = lesion pixels in the patch / min(lesion area, patch area), so a 2 mm calcification
and a 40 mm mass are judged alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.datamodule import ClassificationDataModule
from medconv.data.mammo_transforms import MammoAugment, mammo_train_transforms
from medconv.data.manifest import raise_if_problems, read_manifest
from medconv.data.samplers import decode_draw
from medconv.errors import ConfigError, InputFileError
from medconv.tiling.geometry import grid_in_mask, mask_fractions

PREP_VERSION = 1
MEAN, STD = 0.5, 0.5
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


# --- one image: resample, orient, cache -------------------------------------------------------------
def prepare_image(
    source: str, spacing_mm: float, given_spacing: float | None = None, default_spacing: float | None = None,
    mask_path: str = "", boxes: str = "", cache_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Path | None]:
    """float32 image in [0, 1] at `spacing_mm`, chest wall left; its lesion mask (or None); its cache file.

    Pixel spacing (mm/px): `given_spacing` (the manifest's) wins, then the file's, then `default_spacing`;
    an image with none of them is an error, never a guess.
    """
    img_path = les_path = None
    if cache_dir:
        key = _cache_key(source, spacing_mm, (given_spacing, default_spacing), mask_path, boxes)
        img_path, les_path = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}_lesion.npy"
        if img_path.exists():
            lesion = np.load(les_path) if les_path.exists() else None
            return np.load(img_path).astype(np.float32) / 65535.0, lesion, img_path
    from medconv.data.mammo_prep import breast_mask, infer_laterality
    from medconv.io.mammo import read_mammogram

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
        from medconv.tiling.images import read_mask_png

        lesion, _ = read_mask_png(mask_path)
        if lesion.shape != pixels.shape:
            raise InputFileError(f"{mask_path}: mask is {lesion.shape[::-1]} px but {source} is {pixels.shape[::-1]}; masks must match their image")
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
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        _save_atomic(img_path, np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16))
        if lesion is not None:
            _save_atomic(les_path, lesion)
    return image.astype(np.float32), lesion, img_path


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


def _cache_key(source: str, spacing_mm: float, fallback: object, mask_path: str, boxes: str) -> str:
    st = os.stat(source)
    mask_id = f"{mask_path}|{os.stat(mask_path).st_mtime_ns}" if mask_path else boxes
    ident = f"{Path(source).resolve()}|{st.st_size}|{st.st_mtime_ns}|{spacing_mm}|{fallback}|{mask_id}|{PREP_VERSION}"
    return "patch_" + hashlib.sha1(ident.encode()).hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def image_patches(row: dict, options: PatchOptions, default_spacing: float | None, cache_dir: str | None, seed: int) -> dict:
    """Prepare one manifest row and plan its patches; errors come back as a message (collected by the caller)."""
    cv2.setNumThreads(1)
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
    from medconv.data.mammo_prep import breast_mask

    rng = np.random.default_rng([seed, int(hashlib.sha1(str(row["image_path"]).encode()).hexdigest()[:8], 16)])
    positions, labels, overlaps = plan_patches(breast_mask(image), lesion, options, rng)
    source = str(cached) if cached is not None else image  # workers memory-map the cache file
    return {"source": source, "positions": positions, "labels": labels, "overlaps": overlaps}


# --- dataset ---------------------------------------------------------------------------------------
class MammoPatchDataset(Dataset):
    """Samples: image (in_chans, S, S) normalised, label, image_id, patient/exam ids, laterality, view, x, y.

    `sources[i]` is image i's cached .npy (uint16, memory-mapped once per process) or the array itself.
    """

    def __init__(
        self,
        rows: list[dict],
        sources: list[str | np.ndarray],
        patches: list[tuple[np.ndarray, np.ndarray]],
        patch_size: int,
        in_chans: int = 1,
        transform: Any = None,
        seed: int = 0,
    ):
        self.rows, self.sources = rows, sources
        self.image_index = np.concatenate([np.full(len(p), i) for i, (p, _) in enumerate(patches)] or [np.zeros(0, int)])
        self.positions = np.concatenate([p for p, _ in patches] or [np.zeros((0, 2), np.int64)]).astype(np.int64)
        self.labels = np.concatenate([lab for _, lab in patches] or [np.zeros(0, np.int64)]).astype(np.int64)
        self.size, self.in_chans, self.transform, self.seed = patch_size, in_chans, transform, seed
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def crop(self, i: int, x: int, y: int) -> np.ndarray:
        """float32 (S, S) in [0, 1]; zero beyond the image (only for images smaller than a patch)."""
        source = self.sources[i]
        if isinstance(source, str):
            if i not in self._maps:
                self._maps[i] = np.load(source, mmap_mode="r")
            source = self._maps[i]
        part = np.asarray(source[y : y + self.size, x : x + self.size], np.float32)
        if source.dtype == np.uint16:
            part /= 65535.0
        out = np.zeros((self.size, self.size), np.float32)
        out[: part.shape[0], : part.shape[1]] = part
        return out

    def __getitem__(self, value: int) -> dict:
        index, draw = decode_draw(int(value), len(self))
        i = int(self.image_index[index])
        x, y = (int(v) for v in self.positions[index])
        patch = self.crop(i, x, y)
        if self.transform is not None:
            self.transform.set_random_seed((self.seed * 1_000_003 + draw * 7919 + index) % 2**32)
            patch = self.transform(image=patch)["image"]
        t = torch.from_numpy((np.ascontiguousarray(patch, np.float32) - MEAN) / STD)[None]
        if self.in_chans != 1:
            t = t.expand(self.in_chans, -1, -1).contiguous()
        r = self.rows[i]
        return {
            keys.IMAGE: t,
            keys.LABEL: int(self.labels[index]),
            keys.IMAGE_ID: str(r["image_path"]),
            keys.PATIENT_ID: str(r["patient_id"]),
            keys.EXAM_ID: str(r.get("exam_id") or r["patient_id"]),
            keys.LATERALITY: str(r.get("laterality", "")),
            keys.VIEW: str(r.get("view", "")),
            keys.X: x,
            keys.Y: y,
        }


# --- datamodule ------------------------------------------------------------------------------------
class MammoPatchDataModule(ClassificationDataModule):
    """Patch classification on a mammogram manifest (image_path, label, patient_id [, exam_id, laterality,
    view, split, mask_path, boxes, pixel_spacing_mm]); without a manifest, the synthetic demo set.

    Rows are images (split by patient); their `label` becomes `positive_class` when the image has a lesion
    mask or boxes, else `negative_class`, so splits are stratified by lesion presence. An unannotated image
    whose label is not in `negative_image_labels` is left out: its lesion could be anywhere.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (224, 224),
        in_chans: int = 1,
        batch_size: int = 64,
        num_workers: int = 2,
        balanced_sampling: bool = True,
        spacing_mm: float = 0.2,
        pixel_spacing_mm: float | None = None,
        overlap: float = 0.0,
        min_breast: float = 0.5,
        lesion_patches: int = 8,
        jitter: float = 0.25,
        min_overlap: float = 0.5,
        drop_ambiguous: bool = True,
        negative_image_labels: list[str] | None = None,
        negative_class: str = "background",
        positive_class: str = "lesion",
        augment: MammoAugment | None = None,
        cache_dir: str | None = "medconv_data/cache_patches",
        demo_dir: str = "medconv_data/demo_mammo",
        demo_patients: int = 120,
        demo_seed: int = 0,
        **kwargs,  # the base's: manifest, classes, val/test/label fractions, seed, predict_split
    ):
        super().__init__(
            image_size=image_size, in_chans=in_chans, batch_size=batch_size, num_workers=num_workers,
            balanced_sampling=balanced_sampling, **kwargs,
        )
        if self.image_size[0] != self.image_size[1]:
            raise ConfigError(f"patches are square: image_size must be [S, S], not {list(self.image_size)}")
        self.options = PatchOptions(spacing_mm, int(self.image_size[0]), overlap, min_breast, lesion_patches, jitter,
                                    min_overlap, drop_ambiguous)
        self.pixel_spacing_mm = pixel_spacing_mm
        self.negative_image_labels = list(negative_image_labels or ["negative", "normal"])
        self.negative_class, self.positive_class = negative_class, positive_class
        self.augment = augment if augment is not None else MammoAugment(scale=0.0, translate=0.0, rotate=0.0)
        self.cache_dir = cache_dir
        self.demo_dir, self.demo_patients, self.demo_seed = demo_dir, demo_patients, demo_seed
        self._prepared: dict[str, dict] | None = None

    def default_classes(self) -> list[str] | None:
        return [self.negative_class, self.positive_class]

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        """An image scores as its most suspicious patch: a first look at how patches transfer to images."""
        return {"image": ["image_id"]}

    def manifest_path(self) -> Path:
        if self.manifest is not None:
            return Path(self.manifest)
        from medconv.data.demo_mammo import generate_demo_mammo

        return generate_demo_mammo(Path(self.demo_dir), n_patients=self.demo_patients, seed=self.demo_seed)

    def load_table(self) -> pd.DataFrame:
        path = self.manifest_path()
        table = read_manifest(path, ("image_path", "label", "patient_id"), path_columns=["image_path"],
                              optional_path_columns=["mask_path"])
        for column in ("exam_id", "laterality", "view", "mask_path", "boxes", "pixel_spacing_mm"):
            if column not in table.columns:
                table[column] = ""
        problems, has_boxes = [], []
        for i, (source, value) in enumerate(zip(table["image_path"], table["boxes"])):
            try:
                has_boxes.append(bool(parse_boxes(value, source)))
            except InputFileError as err:
                problems.append(f"row {i + 2}: {err}")
                has_boxes.append(False)
        raise_if_problems(path, problems)
        annotated = (table["mask_path"] != "") | pd.Series(has_boxes, index=table.index)
        keep = annotated | table["label"].isin(self.negative_image_labels)
        table = table[keep].copy()
        table["image_label"] = table["label"]
        table["label"] = np.where(annotated[keep], self.positive_class, self.negative_class)
        return table.reset_index(drop=True)

    def prepared(self) -> dict[str, dict]:
        """Every image of the manifest prepared and planned once (all splits), failures reported together."""
        if getattr(self, "_prepared", None) is None:
            rows = self._table().to_dict("records")
            n = len(rows)
            args = (rows, [self.options] * n, [self.pixel_spacing_mm] * n, [self.cache_dir] * n, [self.seed] * n)
            if self.num_workers > 0 and n > 4:
                with ProcessPoolExecutor(max_workers=self.num_workers) as pool:
                    results = list(pool.map(image_patches, *args, chunksize=4))
            else:
                results = list(map(image_patches, *args))
            raise_if_problems(self.manifest_path(), [res["error"] for res in results if "error" in res])
            self._prepared = {r["image_path"]: res for r, res in zip(rows, results)}
        return self._prepared

    def make_dataset(self, table: pd.DataFrame, stage: str) -> Dataset:
        rows = table.to_dict("records")
        results = [self.prepared()[r["image_path"]] for r in rows]
        patches = []
        for res in results:
            keep = res["labels"] != UNLABELLED
            patches.append((res["positions"][keep], res["labels"][keep]))
        transform = mammo_train_transforms(self.augment) if stage == "train" else None
        return MammoPatchDataset(rows, [res["source"] for res in results], patches, self.options.patch_size,
                                 self.in_chans, transform, self.seed)
