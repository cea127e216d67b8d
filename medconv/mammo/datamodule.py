"""Mammogram classification data: a manifest (or the built-in demo set), validated and prepared up front."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from torch.utils.data import Dataset

from medconv.data.datamodule import ClassificationDataModule
from medconv.data.demo_source import DemoSource, make_demo, with_deprecated_keys
from medconv.data.manifest import raise_if_problems, validate_manifest
from medconv.errors import InputFileError
from medconv.mammo.dataset import MammoDataset, load_prepared, mammo_recipe
from medconv.mammo.transforms import MammoAugment, mammo_train_transforms

REQUIRED = ("image_path", "label", "patient_id")
OPTIONAL = ("exam_id", "laterality", "view", "split", "mask_path", "boxes")
DEMO_CLASSES = ["negative", "positive"]
DEMO = "medconv.demo.MammoDemo"  # the default demo source, named (medconv.demo is a leaf: never imported here)
#: the init args that configured the demo set before the `demo` object (docs/migration.md) -> its field now
DEMO_KEYS = {"demo_dir": "root", "demo_patients": "n_patients", "demo_seed": "seed", "demo_image_size": "image_size",
             "demo_lesion_contrast": "lesion_contrast", "demo_difficulty": "difficulty"}


class MammoDataModule(ClassificationDataModule):
    """Manifest columns: image_path, label, patient_id [, exam_id, laterality, view, split, mask_path, boxes].

    Without a manifest, `demo` makes the data: by default `medconv.demo.MammoDemo()`, the synthetic set of
    `medconv demo-data mammo` in medconv_data/demo_mammo (the `demo_*` init args are its deprecated spelling).
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
        self.augment = augment if augment is not None else MammoAugment()
        self.cache_dir = cache_dir
        given = locals()
        demo = with_deprecated_keys(demo, {key: given[key] for key in DEMO_KEYS}, DEMO_KEYS, DEMO, type(self).__name__)
        self.demo = demo if demo is not None or self.manifest is not None else make_demo(DEMO)

    modality = "mammo"

    def preprocessing(self) -> dict:
        return mammo_recipe(self.image_size)

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        """A breast is positive when any of its views is (max over CC and MLO); an exam when any breast is."""
        return {"breast": ["exam_id", "laterality"], "exam": ["exam_id"]}

    def default_classes(self) -> list[str] | None:
        return DEMO_CLASSES if self.manifest is None else None

    def manifest_path(self) -> Path:
        if self.manifest is not None:
            return Path(self.manifest)
        return self.demo.manifest()

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
