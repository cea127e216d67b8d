"""Slide-level MIL data: one sample per slide, labels per slide, splits by patient as for every medconv datamodule.

Bags are precomputed tile features (`bag_source: features`, from `medconv embed`) or tile images sampled per step
(`bag_source: tiles`, for an encoder fine-tuned end to end).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from medconv.data.datamodule import ClassificationDataModule
from medconv.data.demo_source import DemoSource, make_demo, with_deprecated_keys
from medconv.data.manifest import raise_if_problems, validate_manifest
from medconv.errors import ConfigError, MedconvError
from medconv.mil.bags import FeatureBagDataset, bag_header, collate_bags
from medconv.mil.tile_bags import TileBagDataset
from medconv.tiling.feature_store import encoder_fingerprint as fingerprint
from medconv.tiling.feature_store import read_features
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD, HEAugment, he_train_transforms

REQUIRED = ("label", "patient_id")
DEMO_CLASSES = ["normal", "tumor"]
DEMO = "medconv.demo.MILDemo"  # the default demo source, named (medconv.demo is a leaf: never imported here)
#: the fields of the plain `demo:` mapping (no class_path) that configs had before `medconv.demo.MILDemo` -> its fields
DEMO_KEYS = {"dir": "root", "slides": "n_slides", "seed": "seed", "slide_size": "slide_size", "difficulty": "difficulty",
             "encoder": "encoder", "tile_size": "tile_size", "target_mpp": "target_mpp"}
TILING = ("tile_size", "target_mpp", "min_tissue", "image_size", "dtype")
BAG_SOURCES = ("features", "tiles")


class MILDataModule(ClassificationDataModule):
    """Manifest columns: label, patient_id and, per bag source [, split, slide_id]:

    - features: `features_path`, or `slide_path` with a features folder (`features_dir` column or init arg) holding
      `<slide_id or slide stem>.h5` (HDF5 `features` (N, D) + `coords`, or CLAM `.pt` given by features_path).
    - tiles: `slide_path` with a coords store (`coords_path` column, or `<coords_dir>/<slide_id or stem>.h5` from
      `medconv tile`), read at `image_size`.

    Relative paths in the manifest are relative to its folder; `features_dir` / `coords_dir` given as init args
    are relative to the working directory. Every row is checked (files exist and read, one feature width) and all
    problems are reported at once. `feature_dim` (linked into the task's `in_dim`) is the bags' D, None for tiles.

    Args:
        max_instances: training bags larger than this are subsampled at random each epoch (features).
        tiles_per_bag: tiles sampled per slide and step (tiles); `eval_tiles_per_bag` evenly spaced tiles in
            evaluation (None: all).
        batch_size: slides per batch; bags are padded to the largest with a mask (`collate_bags`).
        demo: without a manifest, what makes the bags: by default `medconv.demo.MILDemo()` (demo slides, tiled and
            embedded once). A plain mapping of its old fields (`dir`, `slides`, ..., no class_path) is deprecated.
    """

    def __init__(
        self,
        bag_source: Literal["features", "tiles"] = "features",
        features_dir: str | None = None,
        max_instances: int | None = None,
        coords_dir: str | None = None,
        tiles_per_bag: int = 16,
        eval_tiles_per_bag: int | None = 64,
        image_size: tuple[int, int] = (224, 224),
        in_chans: int = 3,
        batch_size: int = 1,
        num_workers: int = 2,
        augment: HEAugment | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        backend: str = "auto",
        demo: DemoSource | dict | None = None,
        **kwargs,  # the base's: manifest, classes, val/test/label fractions, seed, balanced_sampling, predict_split
    ):
        super().__init__(image_size=image_size, in_chans=in_chans, batch_size=batch_size, num_workers=num_workers, **kwargs)
        if bag_source not in BAG_SOURCES:
            raise ConfigError(f"bag_source must be one of {BAG_SOURCES}, not {bag_source!r}")
        self.bag_source = bag_source
        self.features_dir = features_dir
        self.max_instances = max_instances
        self.coords_dir = coords_dir
        self.tiles_per_bag = tiles_per_bag
        self.eval_tiles_per_bag = eval_tiles_per_bag
        self.augment = augment if augment is not None else HEAugment()
        self.mean, self.std = tuple(mean), tuple(std)
        self.backend = backend
        if isinstance(demo, dict):  # a config written before the demo object (no class_path)
            unknown = sorted(set(demo) - set(DEMO_KEYS))
            if unknown:
                raise ConfigError(f"demo: unknown keys {unknown}; give demo: {{class_path: {DEMO}, init_args: {{...}}}}")
            demo = with_deprecated_keys(None, demo, DEMO_KEYS, DEMO, type(self).__name__)
        self.demo = demo if demo is not None or self.manifest is not None else make_demo(DEMO)
        self._feature_dim: int | None = None
        self._encoder_info: dict | None = None
        self._feature_tiling: dict = {}

    @property
    def feature_dim(self) -> int | None:
        """Width D of the feature bags (read when the manifest is validated); None when bags are tiles."""
        self._table()
        return self._feature_dim

    @property
    def encoder_info(self) -> dict | None:
        """The `medconv embed` record of the encoder every bag came from (None: CLAM/TRIDENT files, or tiles), so a
        MIL checkpoint can embed new slides the same way at inference."""
        self._table()
        return self._encoder_info

    modality = "mil"

    def preprocessing(self) -> dict:
        """Bags of `medconv embed` features: the encoder and tiling that made them; tiles' normalisation otherwise."""
        if self.bag_source == "tiles":
            return {"bag_source": "tiles", "mean": list(self.mean), "std": list(self.std)}
        return {"bag_source": self.bag_source, "feature_dim": self.feature_dim, "feature_encoder": self.encoder_info,
                "feature_tiling": self.feature_tiling}

    @property
    def feature_tiling(self) -> dict:
        """How the bags were tiled and stored (tile_size, target_mpp, min_tissue, image_size, dtype: `medconv embed`'s
        attributes), so inference tiles new slides the same way without the training files."""
        self._table()
        return dict(self._feature_tiling)

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and standard deviation of the training bags' instances (train split only, so nothing
        of the val/test slides leaks into the model); what `MILModule` standardises features with."""
        if not hasattr(self, "splits"):
            self.setup("fit")
        total = total_sq = None
        count = 0
        for path in self.splits["train"]["features_path"]:
            x = read_features(path).features.astype(np.float64)
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x**2).sum(0) if total_sq is None else total_sq + (x**2).sum(0)
            count += len(x)
        if not count:
            raise ConfigError(f"{self.manifest}: no training bags to compute feature statistics from")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()

    # --- table -------------------------------------------------------------------------------
    def default_classes(self) -> list[str] | None:
        return DEMO_CLASSES if self.manifest is None else None

    def load_table(self) -> pd.DataFrame:
        manifest = Path(self.manifest) if self.manifest is not None else self.demo.manifest()  # demo: reused once made
        tiles = self.bag_source == "tiles"
        table, problems = validate_manifest(
            manifest, REQUIRED, path_columns=["slide_path"] if tiles else [],
            optional_path_columns=["coords_path"] if tiles else ["features_path"], classes=self._classes,
        )
        if not tiles and "features_path" not in table.columns and "slide_path" not in table.columns:
            raise_if_problems(manifest, [*problems, "no features_path or slide_path column: give one of them (features_path "
                                                    "names each slide's feature file; slide_path finds <features_dir>/<slide>.h5)"])
        if tiles and "slide_path" not in table.columns:
            raise_if_problems(manifest, [*problems, "bag_source tiles needs a slide_path column"])
        if "slide_id" not in table.columns:
            table["slide_id"] = ""
        named = zip(table["slide_id"], _column(table, "slide_path"), _column(table, "features_path"), strict=True)
        table["slide_id"] = [sid or next((Path(p).stem for p in paths if p), "") for sid, *paths in named]
        column, folder_column, folder = ("coords_path", "coords_dir", self.coords_dir) if tiles else ("features_path", "features_dir", self.features_dir)
        table[column] = [_store_path(row, column, folder_column, folder, manifest) for row in table.to_dict("records")]
        problems += self._check_rows(table, column)
        dup = sorted(set(table.loc[table["slide_id"].duplicated() & (table["slide_id"] != ""), "slide_id"]))
        if dup:
            problems.append(f"slide ids {dup[:10]} repeat; give a unique slide_id column (bags are named by it)")
        raise_if_problems(manifest, problems)
        return table

    def _check_rows(self, table: pd.DataFrame, column: str) -> list[str]:
        """Every bag file exists and reads, with one feature width across the manifest."""
        problems, widths, encoders = [], {}, {}
        what = "coords store" if self.bag_source == "tiles" else "feature file"
        fix = "`medconv tile` on its slide" if self.bag_source == "tiles" else "`medconv embed` on its slide"
        for i, path in enumerate(table[column]):
            if not path:
                setting = "coords_path column or data.init_args.coords_dir" if self.bag_source == "tiles" else \
                    "features_path column or data.init_args.features_dir"
                problems.append(f"row {i + 2}: no {what}: add a {setting}")
            elif not Path(path).is_file():
                problems.append(f"row {i + 2}: {what} {path} not found; run {fix} with --out {Path(path).parent}")
            elif self.bag_source == "features":
                try:  # medconv files also give the encoder record and tiling of `medconv embed`
                    (_, width), attrs = bag_header(path)
                except MedconvError as err:
                    problems.append(f"row {i + 2}: {err}")
                    continue
                widths.setdefault(width, []).append(i + 2)
                record = json.loads(attrs["encoder"]) if isinstance(attrs.get("encoder"), str) else None
                key = fingerprint(record) if record else ""
                encoders.setdefault(key, (record, [], {k: attrs[k] for k in TILING if k in attrs}))[1].append(i + 2)
        if len(widths) > 1:
            counts = ", ".join(f"D={d} in rows {rows[:5]}" for d, rows in sorted(widths.items()))
            problems.append(f"feature files have different widths ({counts}): embed every slide with the same encoder")
        elif len(encoders) > 1:
            named = ", ".join(f"{(r or {}).get('name', 'no encoder record')} in rows {rows[:5]}" for r, rows, _ in encoders.values())
            problems.append(f"feature files come from different encoders ({named}): embed every slide with the same one")
        self._feature_dim = next(iter(widths)) if len(widths) == 1 else None
        self._encoder_info, _, self._feature_tiling = next(iter(encoders.values())) if len(encoders) == 1 else (None, [], {})
        return problems

    # --- datasets ----------------------------------------------------------------------------
    def make_dataset(self, table: pd.DataFrame, stage: str) -> Dataset:
        labels, train = table["label_index"].tolist(), stage == "train"
        if self.bag_source == "features":
            return FeatureBagDataset(table["features_path"].tolist(), labels, table["slide_id"].tolist(),
                                     table["patient_id"].tolist(), self.max_instances if train else None, seed=self.seed)
        from medconv.wsi.tile_dataset import load_slide_tiles

        slides = []
        for row in table.to_dict("records"):
            try:
                slides.append(load_slide_tiles(row["slide_path"], row["coords_path"], int(row["label_index"]), row["slide_id"],
                                               row["patient_id"], mpp=float(row["mpp"]) if row.get("mpp") else None))
            except MedconvError as err:
                raise type(err)(f"slide {row['slide_path']}: {err}") from err
        return TileBagDataset(
            slides, labels, self.tiles_per_bag if train else self.eval_tiles_per_bag, train=train,
            transform=he_train_transforms(self.augment, seed=self.seed) if train else None,
            image_size=self.image_size, mean=self.mean, std=self.std, seed=self.seed, backend=self.backend,
        )

    def _loader(self, stage: str) -> DataLoader:
        """The base's loader (sampler, order, workers), collating padded bags."""
        base = super()._loader(stage)
        return DataLoader(
            base.dataset, batch_size=base.batch_size, sampler=base.sampler, num_workers=base.num_workers,
            drop_last=base.drop_last, persistent_workers=base.persistent_workers, pin_memory=False, collate_fn=collate_bags,
        )


def _column(table: pd.DataFrame, name: str) -> list[str]:
    return table[name].tolist() if name in table.columns else [""] * len(table)


def _store_path(row: dict, column: str, folder_column: str, folder: str | None, manifest: Path) -> str:
    """The row's own file, else `<folder>/<slide_id>.h5` with the folder from the row (relative to the manifest)
    or the init arg (relative to the working directory); "" when neither is given."""
    if row.get(column):
        return row[column]
    if row.get(folder_column):
        base = Path(row[folder_column]).expanduser()
        base = base if base.is_absolute() else manifest.parent / base
    elif folder:
        base = Path(folder).expanduser().resolve()
    else:
        return ""
    return str(base / f"{row['slide_id']}.h5") if row["slide_id"] else ""
