"""Mammogram patch classification data: the patch-to-image recipe's first step and SSL's patch source.

The patch classifier of Shen et al. (2019, "Deep learning to improve breast cancer detection on
screening mammography") is trained on patches of mammograms and then initialises the whole-image model
(`backbone.init_args.pretrained_path`); the same patches feed self-supervised pretraining. Where patches
go and how they are labelled is `medconv.mammo.patch_prep`; this module turns those plans into samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.datamodule import ClassificationDataModule
from medconv.data.demo_source import DemoSource, make_demo, with_deprecated_keys
from medconv.data.manifest import raise_if_problems, read_manifest
from medconv.data.samplers import decode_draw
from medconv.errors import ConfigError, InputFileError
from medconv.mammo.datamodule import DEMO, DEMO_KEYS
from medconv.mammo.dataset import MEAN, STD, mammo_sample
from medconv.mammo.patch_prep import UNLABELLED, PatchOptions, parse_boxes, prepare_all
from medconv.mammo.transforms import MammoAugment, mammo_train_transforms


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
        return mammo_sample(patch, int(self.labels[index]), self.rows[i], self.in_chans, **{keys.X: x, keys.Y: y})


# --- datamodule ------------------------------------------------------------------------------------
class MammoPatchDataModule(ClassificationDataModule):
    """Patch classification on a mammogram manifest (image_path, label, patient_id [, exam_id, laterality,
    view, split, mask_path, boxes, pixel_spacing_mm]); without a manifest, `demo` makes the data (by default
    `medconv.demo.MammoDemo()`, the same set as `MammoDataModule`'s; the `demo_*` init args are deprecated).

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
        demo: DemoSource | None = None,
        demo_dir: str | None = None,  # deprecated (DEMO_KEYS): set in `demo` instead
        demo_patients: int | None = None,
        demo_seed: int | None = None,
        demo_image_size: tuple[int, int] | None = None,
        demo_lesion_contrast: tuple[float, float] | None = None,
        demo_difficulty: str | None = None,
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
        given = locals()
        demo = with_deprecated_keys(demo, {key: given[key] for key in DEMO_KEYS}, DEMO_KEYS, DEMO, type(self).__name__)
        self.demo = demo if demo is not None or self.manifest is not None else make_demo(DEMO)
        self._prepared: dict[str, dict] | None = None

    def default_classes(self) -> list[str] | None:
        return [self.negative_class, self.positive_class]

    modality = "mammo_patch"

    def preprocessing(self) -> dict:
        """Patches of the prepared mammogram resampled to `spacing_mm`, as a sliding window must cut them."""
        o = self.options
        return {"steps": ["breast_crop", "chest_wall_left", "resample_to_spacing", "patches"], "spacing_mm": o.spacing_mm,
                "patch_size": o.patch_size, "overlap": o.overlap, "min_breast": o.min_breast,
                "pixel_spacing_mm": self.pixel_spacing_mm, "positive_class": self.positive_class,
                "mean": [MEAN], "std": [STD]}

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        """An image scores as its most suspicious patch: a first look at how patches transfer to images."""
        return {"image": ["image_id"]}

    def manifest_path(self) -> Path:
        if self.manifest is not None:
            return Path(self.manifest)
        return self.demo.manifest()

    def load_table(self) -> pd.DataFrame:
        path = self.manifest_path()
        table = read_manifest(path, ("image_path", "label", "patient_id"), path_columns=["image_path"],
                              optional_path_columns=["mask_path"])
        for column in ("exam_id", "laterality", "view", "mask_path", "boxes", "pixel_spacing_mm"):
            if column not in table.columns:
                table[column] = ""
        problems, has_boxes = [], []
        for i, (source, value) in enumerate(zip(table["image_path"], table["boxes"], strict=True)):
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
        """Every image of the manifest prepared and planned once (all splits), failures reported together.

        On threads (`num_workers` of them), not forked processes: see `medconv.mammo.patch_prep`.
        """
        if getattr(self, "_prepared", None) is None:
            # One plan per file: a file listed twice would otherwise be written to its cache by two threads.
            rows = self._table().drop_duplicates("image_path").to_dict("records")
            root = str(self.manifest_path().parent)  # image paths are built from it (not resolved) too
            results = prepare_all(rows, self.options, self.pixel_spacing_mm, self.cache_dir, self.seed, self.num_workers, root)
            raise_if_problems(self.manifest_path(), [res["error"] for res in results if "error" in res])
            self._prepared = {r["image_path"]: res for r, res in zip(rows, results, strict=True)}
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
