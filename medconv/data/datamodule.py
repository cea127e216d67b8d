"""The base of every classification datamodule: classes, patient splits, label fractions, loaders.

Subclasses (mammograms, WSI tiles) say how to get the validated table and how to make a dataset; the
base decides everything that must be the same across modalities, so ablations compare like with like.
"""

from __future__ import annotations

import hashlib
import warnings

import lightning as L
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from medconv.data.samplers import EpochSeededSampler, balanced_weights
from medconv.data.splits import assign_fold_splits, assign_splits, label_fraction_mask
from medconv.errors import ConfigError

STAGES = ("train", "val", "test", "predict")


class ClassificationDataModule(L.LightningDataModule):
    """Rows of `load_table()` are samples with `label`, `patient_id` and (after setup) `split`, `label_index`.

    `split_seed` draws the patient-level train/val/test split (None: `seed`); `seed` draws the nested label-fraction
    subset, augmentation and batch order. Fixing `split_seed` keeps the test patients the same across an ablation.

    `n_folds` (None: one split as above) switches to patient-level k-fold cross-validation for small sets: the
    patients are dealt into `n_folds` stratified folds by `split_seed`, the test set is fold `fold`, and
    validation is `val_fraction` of the other folds' patients (`test_fraction` must then stay 0).
    """

    def __init__(
        self,
        manifest: str | None = None,
        classes: list[str] | None = None,
        image_size: tuple[int, int] = (512, 512),
        in_chans: int = 3,
        batch_size: int = 8,
        num_workers: int = 2,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        label_fraction: float = 1.0,
        seed: int = 0,
        split_seed: int | None = None,
        balanced_sampling: bool = False,
        predict_split: str = "test",
        n_folds: int | None = None,
        fold: int = 0,
    ):
        super().__init__()
        self.manifest = manifest
        self._classes = list(classes) if classes is not None else None
        self.image_size = tuple(image_size)
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.label_fraction = label_fraction
        self.seed = seed
        # An ablation fixes split_seed so the held-out patients stay the same while `seed` varies the label subset.
        self.split_seed = split_seed
        self.n_folds, self.fold = n_folds, fold
        self.balanced_sampling = balanced_sampling
        self.predict_split = predict_split
        self.table: pd.DataFrame | None = None
        self.datasets: dict[str, Dataset] = {}
        # Pretraining (medconv.ssl.data.PretrainDataModule) sets False: a manifest without labels is then unlabelled.
        self.labels_required = True

    #: what inference runs the model on: "mammo" (whole images), "mammo_patch" (sliding window over mammograms),
    #: "wsi" (tiles of slides), "mil" (bags of slide features); written into every checkpoint
    modality: str = ""

    # --- what subclasses provide -------------------------------------------------------------
    def describe(self) -> dict:
        """What inference must repeat, written into each checkpoint's run record: modality and preprocessing."""
        return {"modality": self.modality, "preprocessing": self.preprocessing(), **self.split_description()}

    def split_description(self) -> dict:
        """Which patients were held out: k-fold settings and the seed that drew the split (recorded in checkpoints)."""
        return {"n_folds": self.n_folds, "fold": self.fold if self.n_folds else None, "split_seed": self._split_seed()}

    def _split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def preprocessing(self) -> dict:
        """The recipe from a file to the model's input (crop, flip, resize, tile geometry, normalisation)."""
        return {}

    def load_table(self) -> pd.DataFrame:
        """The validated manifest (raises ManifestError listing every problem)."""
        raise NotImplementedError

    def make_dataset(self, table: pd.DataFrame, stage: str) -> Dataset:
        raise NotImplementedError

    def default_classes(self) -> list[str] | None:
        """Classes when the config gives none (e.g. the demo data's); None = sorted labels of the table."""
        return None

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        """Groups scored besides single samples, e.g. {"breast": ["exam_id", "laterality"]}; linked into the task."""
        return {}

    # --- shared -------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            self._classes = self.default_classes()
        if self._classes is None:
            self._classes = sorted(set(self._table()["label"]))
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _table(self) -> pd.DataFrame:
        if self.table is None:
            self.table = self.load_table()
        return self.table

    def setup(self, stage: str | None = None) -> None:
        _check_folds(self.n_folds, self.fold, self.test_fraction)  # here, not in __init__: a one-line CLI error
        table = self._table().copy()
        index = {c: i for i, c in enumerate(self.classes)}
        table["label_index"] = table["label"].map(index)
        if table["label_index"].isna().any():
            unknown = sorted(set(table.loc[table["label_index"].isna(), "label"]))
            raise ConfigError(f"labels {unknown} in {self.manifest or 'the data'} are not among classes {self.classes}")
        table["label_index"] = table["label_index"].astype(int)
        given = table["split"] if "split" in table.columns else pd.Series([""] * len(table), index=table.index)
        if self.n_folds is not None:
            table["split"] = self._fold_splits(table, given)
        elif (given == "").all() and stage in ("test", "predict") and self.test_fraction == 0:
            table["split"] = "test"  # an external set (no split column): every row is evaluated
        elif (given == "").all():
            try:
                table["split"] = assign_splits(
                    table["patient_id"].tolist(), table["label_index"].tolist(), self.val_fraction, self.test_fraction,
                    self._split_seed(),
                )
            except ValueError as err:
                raise ConfigError(
                    f"{self.manifest or 'the data'}: {err}. To evaluate on a whole external manifest, give it without a "
                    "split column to `medconv test` and leave test_fraction at 0."
                ) from err
        elif (given == "").any():
            raise ConfigError(f"{self.manifest}: the split column is filled for some rows only; fill it for all or none")
        train = table[table["split"] == "train"]
        if self.label_fraction < 1:
            train = train[label_fraction_mask(train["patient_id"].tolist(), train["label_index"].tolist(), self.label_fraction, self.seed)]
        self.splits = {"train": train, "val": table[table["split"] == "val"], "test": table[table["split"] == "test"]}
        self.splits["predict"] = self.splits[self.predict_split] if self.predict_split in self.splits else table
        for name in STAGES:
            if len(self.splits[name]):
                self.datasets[name] = self.make_dataset(self.splits[name].reset_index(drop=True), name)

    def _fold_splits(self, table: pd.DataFrame, given: pd.Series) -> list[str]:
        where = self.manifest or "the data"
        if not (given == "").all():
            raise ConfigError(f"{where}: n_folds={self.n_folds} draws its own patient folds, but the manifest has a split "
                              "column; drop that column for cross-validation, or set n_folds: null to use it")
        try:
            return assign_fold_splits(table["patient_id"].tolist(), table["label_index"].tolist(), self.n_folds, self.fold,
                                      self.val_fraction, self._split_seed()).tolist()
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from err

    # --- which patients a checkpoint has seen -------------------------------------------------
    def state_dict(self) -> dict:
        """Saved in checkpoints: hashes (not ids, checkpoints get shared) of the patients used to fit or select."""
        seen = set(self.splits["train"]["patient_id"]) | set(self.splits["val"]["patient_id"]) if hasattr(self, "splits") else set()
        return {"fit_patient_hashes": sorted(patient_hash(p) for p in seen)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Refuse to test a checkpoint on patients it was trained or selected on (predict only warns)."""
        seen = set(state_dict.get("fit_patient_hashes", []))
        fn = getattr(getattr(self.trainer, "state", None), "fn", None)
        stage = {"test": "test", "predict": "predict"}.get(str(getattr(fn, "value", fn)))
        if not seen or stage is None or not hasattr(self, "splits"):
            return
        patients = sorted(set(self.splits[stage]["patient_id"]))
        overlap = [p for p in patients if patient_hash(p) in seen]
        if not overlap:
            return
        message = (
            f"{self.manifest or 'the data'}: {len(overlap)} of {len(patients)} {stage} patients (e.g. {', '.join(overlap[:3])}) "
            "were in this checkpoint's training or validation split, so their metrics would not measure generalisation. "
            "Give a manifest of other patients, or one whose split column marks the held-out test rows."
        )
        if stage == "test":
            raise ConfigError(message)
        warnings.warn(message, stacklevel=2)

    def _loader(self, stage: str) -> DataLoader:
        if stage not in self.datasets:
            raise ConfigError(
                f"no {stage} samples: the manifest's split column has no {stage!r} rows "
                f"(or set {'val_fraction' if stage == 'val' else 'test_fraction'} > 0 when splitting by patient)"
            )
        dataset = self.datasets[stage]
        sampler = None
        if stage == "train":
            # A dataset whose samples are not the table's rows (tiles, patches) exposes its own `labels`.
            labels = getattr(dataset, "labels", None)
            labels = self.splits["train"]["label_index"].tolist() if labels is None else list(labels)
            weights = balanced_weights(labels) if self.balanced_sampling else None
            sampler = EpochSeededSampler(len(dataset), seed=self.seed, weights=weights)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            drop_last=stage == "train" and len(dataset) > self.batch_size,
            persistent_workers=self.num_workers > 0 and stage == "train",
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


def _check_folds(n_folds: int | None, fold: int, test_fraction: float) -> None:
    if n_folds is None:
        return
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2 (or null for one split), not {n_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise ConfigError(f"fold must be in 0..{n_folds - 1} for n_folds={n_folds}, not {fold!r}")
    if test_fraction:
        raise ConfigError(f"with n_folds={n_folds} the test set is fold {fold}: set test_fraction to 0 (it is {test_fraction})")


def patient_hash(patient_id: str) -> str:
    return hashlib.sha256(f"medconv:{patient_id}".encode()).hexdigest()[:16]
