"""Tile classification on whole-slide images: slides split by patient, tiles read on the fly.

Rows of the table are slides (so splits and label fractions are by patient, as for every medconv
datamodule); each stage's dataset expands its slides into tiles from their coords stores. Tile labels
come from a tumour mask or annotation polygons where the manifest gives one, else from the slide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from medconv.data.datamodule import ClassificationDataModule
from medconv.data.demo_source import TiledDemoSource, make_demo, with_deprecated_keys
from medconv.data.manifest import raise_if_problems, read_manifest
from medconv.errors import ConfigError, MedconvError
from medconv.wsi.tile_dataset import UNLABELLED, SlideTiles, TileDataset, load_slide_tiles
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD, HEAugment, he_train_transforms

REQUIRED = ("slide_path", "label", "patient_id")
OPTIONAL_PATHS = ("coords_path", "mask_path", "annotation_path")
DEMO_CLASSES = ["normal", "tumor"]
DEMO = "medconv.demo.SlideDemo"  # the default demo source, named (medconv.demo is a leaf: never imported here)
#: the init args that configured the demo slides before the `demo` object (docs/migration.md) -> its field now
DEMO_KEYS = {"demo_dir": "root", "demo_slides": "n_slides", "demo_seed": "seed", "demo_slide_size": "slide_size",
             "demo_difficulty": "difficulty"}


class WSITileDataModule(ClassificationDataModule):
    """Manifest columns: slide_path, label, patient_id [, split, slide_id, coords_path, coords_dir, mask_path,
    mask_downsample, annotation_path, mpp]; relative paths are relative to the manifest's folder.

    A slide's coords store is its `coords_path`, else `<coords_dir>/<slide stem>.h5` (`medconv tile SLIDES
    --out DIR` writes those). `tile_labels`: "auto" labels tiles from `mask_path` / `annotation_path`
    (ASAP XML or QuPath GeoJSON) where present and from the slide label elsewhere; "slide" always uses
    the slide label. Without a manifest, `demo` makes the data, tiled at `target_mpp` / `tile_size`: by default
    `medconv.demo.SlideDemo()`, the slides of `medconv demo-data wsi` in medconv_data/demo_wsi (the `demo_*` init
    args are its deprecated spelling).
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (224, 224),
        in_chans: int = 3,
        batch_size: int = 64,
        num_workers: int = 4,
        balanced_sampling: bool = False,
        coords_dir: str | None = None,
        tile_labels: str = "auto",
        positive_class: str = "tumor",
        negative_class: str = "normal",
        tumour_threshold: float = 0.5,
        drop_ambiguous: bool = True,
        max_tiles_per_slide: int | None = None,
        max_eval_tiles_per_slide: int | None = None,
        augment: HEAugment | None = None,
        mean: tuple[float, float, float] | None = None,  # None: the backbone's pretrained weights' (set by the CLI), else ImageNet's
        std: tuple[float, float, float] | None = None,
        backend: str = "auto",
        target_mpp: float = 0.5,
        tile_size: int = 224,
        demo: TiledDemoSource | None = None,
        demo_dir: str | None = None,  # deprecated (DEMO_KEYS): set in `demo` instead
        demo_slides: int | None = None,
        demo_seed: int | None = None,
        demo_slide_size: tuple[int, int] | None = None,
        demo_difficulty: str | None = None,
        **kwargs,  # the base's: manifest, classes, val/test/label fractions, seed, predict_split
    ):
        super().__init__(
            image_size=image_size, in_chans=in_chans, batch_size=batch_size, num_workers=num_workers,
            balanced_sampling=balanced_sampling, **kwargs,
        )
        if tile_labels not in ("auto", "slide"):
            raise ConfigError(f"tile_labels must be 'auto' or 'slide', not {tile_labels!r}")
        if in_chans != 3:
            raise ConfigError(f"H&E tiles are RGB: in_chans must be 3, not {in_chans}")
        self.coords_dir = coords_dir
        self.tile_labels = tile_labels
        self.positive_class, self.negative_class = positive_class, negative_class
        self.tumour_threshold = tumour_threshold
        self.drop_ambiguous = drop_ambiguous
        self.max_tiles_per_slide = max_tiles_per_slide
        self.max_eval_tiles_per_slide = max_eval_tiles_per_slide
        self.augment = augment if augment is not None else HEAugment()
        self.mean, self.std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        self.backend = backend
        self.target_mpp, self.tile_size = target_mpp, tile_size
        given = locals()
        demo = with_deprecated_keys(demo, {key: given[key] for key in DEMO_KEYS}, DEMO_KEYS, DEMO, type(self).__name__)
        self.demo = demo if demo is not None or self.manifest is not None else make_demo(DEMO)

    def default_classes(self) -> list[str] | None:
        return DEMO_CLASSES if self.manifest is None else None

    modality = "wsi"

    def preprocessing(self) -> dict:
        return {"tile_size": self.tile_size, "target_mpp": self.target_mpp, "backend": self.backend,
                "mean": list(self.mean), "std": list(self.std)}

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        """A slide scores as its most suspicious tile (max), the usual slide-level read-out of a tile classifier."""
        return {"slide": ["slide_id"]}

    # --- table -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.manifest is None:
            self.demo.manifest(self.tile_size, self.target_mpp)

    def load_table(self) -> pd.DataFrame:
        if self.manifest is None:  # demo slides and their coords stores, reused when already there
            manifest, coords_dir = self.demo.manifest(self.tile_size, self.target_mpp), None
        else:
            manifest = Path(self.manifest)
            coords_dir = Path(self.coords_dir).expanduser().resolve() if self.coords_dir else None  # relative to cwd
        table = read_manifest(manifest, REQUIRED, path_columns=["slide_path"], optional_path_columns=OPTIONAL_PATHS,
                              classes=self._classes, labels_optional=not self.labels_required)
        if "slide_id" not in table.columns or (table["slide_id"] == "").any():
            table["slide_id"] = [Path(p).stem for p in table["slide_path"]]
        problems = []
        if table["slide_id"].duplicated().any():
            dup = sorted(set(table.loc[table["slide_id"].duplicated(), "slide_id"]))
            problems.append(f"slide ids {dup[:10]} repeat; give a unique slide_id column (coords stores are named by it)")
        table["coords_path"] = [self._coords_path(row, manifest, coords_dir) for row in table.to_dict("records")]
        for i, path in enumerate(table["coords_path"]):
            if not path:
                problems.append(f"row {i + 2}: no coords store: add a coords_path column or set data.init_args.coords_dir")
            elif not Path(path).exists():
                problems.append(f"row {i + 2}: coords store {path} not found; run `medconv tile` on {table['slide_path'][i]} "
                                f"with --out {Path(path).parent}")
        for column in ("mask_path", "annotation_path", "mask_downsample", "mpp"):
            if column not in table.columns:
                table[column] = ""
        raise_if_problems(manifest, problems)
        return table

    @staticmethod
    def _coords_path(row: dict, manifest: Path, coords_dir: Path | None) -> str:
        if row.get("coords_path"):
            return row["coords_path"]
        if row.get("coords_dir"):  # a manifest column: relative to the manifest's folder
            folder = Path(row["coords_dir"]).expanduser()
            coords_dir = folder if folder.is_absolute() else manifest.parent / folder
        return str(coords_dir / f"{row['slide_id']}.h5") if coords_dir else ""

    # --- datasets ----------------------------------------------------------------------------
    def slide_tiles(self, row: dict, cap: int | None) -> SlideTiles:
        index = {c: i for i, c in enumerate(self.classes)}
        annotated = self.tile_labels == "auto" and (row["mask_path"] or row["annotation_path"])
        if annotated and (self.positive_class not in index or self.negative_class not in index):
            raise ConfigError(
                f"tile labels from annotations need classes {self.positive_class!r} and {self.negative_class!r} "
                f"(have {self.classes}); set positive_class / negative_class"
            )
        try:
            st = load_slide_tiles(
                row["slide_path"], row["coords_path"], int(row["label_index"]), row["slide_id"], row["patient_id"],
                mask_path=row["mask_path"] if annotated else None,
                mask_downsample=float(row["mask_downsample"]) if row["mask_downsample"] else None,
                annotation_path=row["annotation_path"] if annotated and not row["mask_path"] else None,
                positive_index=index.get(self.positive_class, 1), negative_index=index.get(self.negative_class, 0),
                tumour_threshold=self.tumour_threshold, drop_ambiguous=self.drop_ambiguous,
                mpp=float(row["mpp"]) if row["mpp"] else None,
            )
        except MedconvError as err:
            raise type(err)(f"slide {row['slide_path']}: {err}") from err
        keep = st.labels != UNLABELLED
        if cap is not None and keep.sum() > cap:  # evenly spaced, so the subset still covers the slide
            idx = keep.nonzero()[0]
            keep[:] = False
            keep[idx[np.linspace(0, len(idx) - 1, cap).round().astype(int)]] = True
        return st.subset(keep)

    def make_dataset(self, table: pd.DataFrame, stage: str) -> Dataset:
        cap = self.max_tiles_per_slide if stage == "train" else self.max_eval_tiles_per_slide if stage in ("val", "test") else None
        slides = [self.slide_tiles(row, cap) for row in table.to_dict("records")]
        transform = he_train_transforms(self.augment, seed=self.seed) if stage == "train" else None
        return TileDataset(slides, transform, self.image_size, self.mean, self.std, seed=self.seed, backend=self.backend)
