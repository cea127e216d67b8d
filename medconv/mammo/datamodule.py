"""Mammogram classification data: a manifest (or the built-in demo set), validated and prepared up front."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from torch.utils.data import Dataset

from medconv.data.datamodule import ClassificationDataModule
from medconv.data.manifest import raise_if_problems, validate_manifest
from medconv.demo.difficulty import check_difficulty
from medconv.errors import InputFileError
from medconv.mammo.dataset import MammoDataset, load_prepared
from medconv.mammo.transforms import MammoAugment, mammo_train_transforms

REQUIRED = ("image_path", "label", "patient_id")
OPTIONAL = ("exam_id", "laterality", "view", "split", "mask_path", "boxes")
DEMO_CLASSES = ["negative", "positive"]


class MammoDataModule(ClassificationDataModule):
    """Manifest columns: image_path, label, patient_id [, exam_id, laterality, view, split, mask_path, boxes].

    Without a manifest, the synthetic demo set (`medconv demo-data mammo`) is generated into `demo_dir`.
    Every image is read and prepared once before training (in `prepare_data`, on one process), which
    both fills the cache and reports every unreadable file or image without a breast in one message.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (2048, 1024),
        in_chans: int = 1,
        batch_size: int = 8,
        num_workers: int = 2,
        balanced_sampling: bool = False,
        augment: MammoAugment | None = None,
        cache_dir: str | None = "medconv_data/cache",
        demo_dir: str = "medconv_data/demo_mammo",
        demo_patients: int = 120,
        demo_seed: int = 0,
        demo_image_size: tuple[int, int] = (1024, 800),
        demo_lesion_contrast: tuple[float, float] = (0.15, 0.4),
        demo_difficulty: str = "easy",
        **kwargs,  # the base's: manifest, classes, val/test/label fractions, seed, predict_split
    ):
        super().__init__(
            image_size=image_size, in_chans=in_chans, batch_size=batch_size, num_workers=num_workers,
            balanced_sampling=balanced_sampling, **kwargs,
        )
        self.augment = augment if augment is not None else MammoAugment()
        self.cache_dir = cache_dir
        self.demo_dir = demo_dir
        self.demo_patients = demo_patients
        self.demo_seed = demo_seed
        self.demo_image_size = tuple(demo_image_size)
        self.demo_lesion_contrast = tuple(demo_lesion_contrast)
        self.demo_difficulty = check_difficulty(demo_difficulty)  # easy | hard: the demo set lives in <demo_dir>_hard

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        """A breast is positive when any of its views is (max over CC and MLO); an exam when any breast is."""
        return {"breast": ["exam_id", "laterality"], "exam": ["exam_id"]}

    def default_classes(self) -> list[str] | None:
        return DEMO_CLASSES if self.manifest is None else None

    def manifest_path(self) -> Path:
        if self.manifest is not None:
            return Path(self.manifest)
        from medconv.demo.mammo import demo_manifest

        return demo_manifest(self.demo_dir, self.demo_patients, self.demo_seed, self.demo_image_size, self.demo_lesion_contrast,
                             self.demo_difficulty)

    def load_table(self) -> pd.DataFrame:
        table, problems = self._validated()
        raise_if_problems(self.manifest_path(), problems)
        return table

    def _validated(self) -> tuple[pd.DataFrame, list[str]]:
        table, problems = validate_manifest(
            self.manifest_path(), REQUIRED, path_columns=["image_path"], optional_path_columns=["mask_path"], classes=self._classes,
            labels_optional=not self.labels_required,
        )
        for column in OPTIONAL:
            if column not in table.columns:
                table[column] = ""
        table["laterality"] = table["laterality"].str.upper().str[:1]
        return table, problems

    def prepare_data(self) -> None:
        """Read and prepare every image once; report all failures together before training starts."""
        table, problems = self._validated()
        readable = table["image_path"].map(lambda p: bool(p) and Path(p).exists())
        rows = [i for i, ok in enumerate(readable) if ok]
        sources = table["image_path"].iloc[rows].tolist()
        sides = table["laterality"].iloc[rows].tolist()
        size = self.image_size
        # Threads, not processes: decoding and resizing release the GIL, and forking a process that has
        # started torch/OpenCV threads can deadlock.
        with ThreadPoolExecutor(max_workers=max(1, self.num_workers)) as pool:
            errors = list(pool.map(_try_prepare, sources, sides, [size] * len(sources), [self.cache_dir] * len(sources)))
        problems += [f"row {i + 2}: {err}" for i, err in zip(rows, errors, strict=True) if err]
        raise_if_problems(self.manifest_path(), problems)

    def make_dataset(self, table: pd.DataFrame, stage: str) -> Dataset:
        transform = mammo_train_transforms(self.augment) if stage == "train" else None
        return MammoDataset(table, self.image_size, self.in_chans, self.cache_dir, transform, seed=self.seed)


def _try_prepare(source: str, laterality: str, size: tuple[int, int], cache_dir: str | None) -> str | None:
    try:
        load_prepared(source, size, laterality, cache_dir if cache_dir else None)
    except InputFileError as err:
        return str(err)
    return None
