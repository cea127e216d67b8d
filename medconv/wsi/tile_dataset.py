"""Tiles read on the fly from slides + coords stores: no tile export, one slide handle per worker process.

A `SlideTiles` is everything one slide contributes (coords, per-tile labels, how to read a tile); a
`TileDataset` concatenates them. Slide handles are opened lazily in the process that reads, so a
dataset pickled into DataLoader workers never shares an OpenSlide/TIFF handle across a fork.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.samplers import decode_draw
from medconv.errors import InputFileError
from medconv.io.annotations import polygon_fractions, read_annotations, tumour_region
from medconv.tiling.coords_store import read_coords
from medconv.tiling.geometry import mask_fractions
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor

UNLABELLED = -1


@dataclass
class SlideTiles:
    """One slide's tiles: level-0 top-left coords (N, 2) and label indices (N,), UNLABELLED allowed."""

    slide_path: str
    slide_id: str
    patient_id: str
    coords: np.ndarray
    labels: np.ndarray
    level: int
    read_size: int
    tile_size: int
    patch_size_level0: int
    mpp: float | None = None  # only for slides whose file lacks it
    fractions: np.ndarray | None = field(default=None, repr=False)  # tumour fraction per tile, when annotated

    def subset(self, keep: np.ndarray) -> SlideTiles:
        fr = None if self.fractions is None else self.fractions[keep]
        return SlideTiles(
            self.slide_path, self.slide_id, self.patient_id, self.coords[keep], self.labels[keep], self.level,
            self.read_size, self.tile_size, self.patch_size_level0, self.mpp, fr,
        )


def load_slide_tiles(
    slide_path: str | Path,
    coords_path: str | Path,
    label_index: int,
    slide_id: str | None = None,
    patient_id: str = "",
    mask_path: str | Path | None = None,
    mask_downsample: float | None = None,
    annotation_path: str | Path | None = None,
    positive_index: int = 1,
    negative_index: int = 0,
    tumour_threshold: float = 0.5,
    drop_ambiguous: bool = True,
    mpp: float | None = None,
) -> SlideTiles:
    """Coords store + labels: per tile from a mask or polygons when given, else the slide's label for all.

    With an annotation, a tile is positive when at least `tumour_threshold` of it is tumour; tiles with
    some tumour but less than that are dropped (`drop_ambiguous`) or called negative.
    """
    coords, attrs = read_coords(coords_path)
    missing = [k for k in ("level", "read_size", "tile_size", "patch_size_level0") if k not in attrs]
    if missing and "patch_level" in attrs and "patch_size" in attrs:  # CLAM store: tiles read at native size
        attrs = {"level": attrs["patch_level"], "read_size": attrs["patch_size"], "tile_size": attrs["patch_size"],
                 "patch_size_level0": attrs.get("patch_size_level0", attrs["patch_size"]), **attrs}
    elif missing:
        raise InputFileError(f"{coords_path}: coords store lacks {missing}; re-run `medconv tile` on {slide_path}.")
    size0 = float(attrs["patch_size_level0"])
    fractions = None
    if mask_path:
        fractions = _mask_tile_fractions(Path(mask_path), mask_downsample, coords, size0, attrs)
    elif annotation_path:
        fractions = polygon_fractions(tumour_region(read_annotations(annotation_path)), coords, size0)
    if fractions is None:
        labels = np.full(len(coords), label_index, dtype=np.int64)
    else:
        labels = np.where(fractions >= tumour_threshold, positive_index, negative_index).astype(np.int64)
        if drop_ambiguous:
            labels[(fractions > 0) & (fractions < tumour_threshold)] = UNLABELLED
    return SlideTiles(
        slide_path=str(slide_path),
        slide_id=slide_id or Path(slide_path).stem,
        patient_id=str(patient_id),
        coords=coords,
        labels=labels,
        level=int(attrs["level"]),
        read_size=int(attrs["read_size"]),
        tile_size=int(attrs["tile_size"]),
        patch_size_level0=int(round(size0)),
        mpp=mpp,
        fractions=None if fractions is None else np.asarray(fractions, dtype=np.float32),
    )


def _mask_tile_fractions(
    path: Path, downsample: float | None, coords: np.ndarray, size0: float, attrs: dict[str, Any]
) -> np.ndarray:
    """Tumour fraction per tile from a mask PNG; its downsample comes from the manifest, the PNG, or sizes."""
    from medconv.io.png import read_mask_png

    try:
        mask, recorded = read_mask_png(path)
    except (OSError, ValueError) as err:
        raise InputFileError(f"{path}: unreadable tumour mask ({err}); re-export it as a PNG.") from err
    ds = downsample or recorded
    if not ds and "slide_width" in attrs:
        ds = float(attrs["slide_width"]) / mask.shape[1]
    if not ds:
        raise InputFileError(f"{path}: the mask's downsample is unknown; add a mask_downsample column to the manifest.")
    return mask_fractions(coords, size0, mask, float(ds)).astype(np.float32)


class TileDataset(Dataset):
    """Samples are dicts: image (C, H, W) float32 normalised, label, slide_id, patient_id, x, y, level.

    `transform` is an albumentations pipeline on uint8 RGB (train only); it is reseeded per draw from the
    sampler's encoded index (see `EpochSeededSampler`), so augmentation replays exactly on resume.
    """

    def __init__(
        self,
        slides: list[SlideTiles],
        transform: A.BaseCompose | None = None,
        image_size: tuple[int, int] | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        seed: int = 0,
        backend: str = "auto",
        max_open: int = 32,
    ):
        self.slides = [s for s in slides if len(s.coords)]
        self.transform = transform
        self.image_size = tuple(image_size) if image_size is not None else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.backend = backend
        self.max_open = max_open
        self._offsets = np.cumsum([0] + [len(s.coords) for s in self.slides])
        self._readers: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(slide index, tile index within that slide) of a dataset index."""
        slide_index = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return slide_index, index - int(self._offsets[slide_index])

    def first_index(self, slide_index: int) -> int:
        """The dataset index of a slide's first tile (its tiles follow in store order)."""
        return int(self._offsets[slide_index])

    @property
    def labels(self) -> np.ndarray:
        """Label index of every tile, in dataset order (for balanced sampling and metrics)."""
        if not self.slides:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([s.labels for s in self.slides])

    def read_tile(self, slide_index: int, tile_index: int) -> np.ndarray:
        """uint8 RGB (tile_size, tile_size, 3) at the store's target resolution."""
        st = self.slides[slide_index]
        x, y = (int(v) for v in st.coords[tile_index])
        tile = self._reader(slide_index).read_region((x, y), st.level, (st.read_size, st.read_size))
        if st.read_size != st.tile_size:
            interp = cv2.INTER_AREA if st.read_size > st.tile_size else cv2.INTER_LINEAR
            tile = cv2.resize(tile, (st.tile_size, st.tile_size), interpolation=interp)
        return tile

    def tile(self, slide_index: int, tile_index: int) -> np.ndarray:
        """uint8 RGB (H, W, 3) at the model's image size (the tile as read when no image size is set)."""
        image = self.read_tile(slide_index, tile_index)
        if self.image_size is not None and image.shape[:2] != self.image_size:
            image = cv2.resize(image, (self.image_size[1], self.image_size[0]), interpolation=cv2.INTER_AREA)
        return image

    def __getitem__(self, value: int) -> dict[str, Any]:
        index, draw = decode_draw(int(value), len(self))
        slide_index, tile_index = self.locate(index)
        st = self.slides[slide_index]
        image = self.tile(slide_index, tile_index)
        if self.transform is not None:
            self.transform.set_random_seed((self.seed * 1_000_003 + draw * 7919 + index) % 2**32)
            image = self.transform(image=image)["image"]
        x, y = (int(v) for v in st.coords[tile_index])
        return {
            keys.IMAGE: to_tensor(image, self.mean, self.std),
            keys.LABEL: int(st.labels[tile_index]),
            keys.SLIDE_ID: st.slide_id,
            keys.IMAGE_ID: st.slide_id,  # with x, y it names the tile (metrics dedupe on it)
            keys.PATIENT_ID: st.patient_id,
            keys.X: x,
            keys.Y: y,
            keys.LEVEL: st.level,
        }

    # --- one handle per slide per process, opened on first use ----------------------------------
    def _reader(self, slide_index: int) -> Any:
        if os.getpid() != self._pid:  # forked into a worker: inherited handles belong to the parent
            self._readers = OrderedDict()
            self._pid = os.getpid()
        reader = self._readers.get(slide_index)
        if reader is None:
            from medconv.io.slide import open_slide

            st = self.slides[slide_index]
            reader = open_slide(st.slide_path, mpp=st.mpp, backend=self.backend)
            self._readers[slide_index] = reader
            while len(self._readers) > self.max_open:
                _, old = self._readers.popitem(last=False)
                old.close()
        else:
            self._readers.move_to_end(slide_index)
        return reader

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()  # handles never travel to workers
        return state
