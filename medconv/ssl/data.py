"""Pretraining data: unlabelled images from a classification datamodule's train split or a folder, as SSL views.

The source is configured as usual (class_path/init_args): `medconv.mammo.MammoDataModule` (manifest or demo
set: its preparation, cache, patient split and train transforms), `medconv.wsi.WSITileDataModule` (tiles
from coords stores), `medconv.mammo.MammoPatchDataModule`, or `medconv.ssl.ImageFolder`. Only the source's
**train split** is pretrained on, all of it (`label_fraction` does not apply), so validation and test patients
are never seen; labels are never read except by `probe_dataloaders()`, which gives the representation probes
a small stratified labelled subset of the train split and the val split, both with evaluation transforms.
"""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from medconv.data.datamodule import ClassificationDataModule
from medconv.data.samplers import EpochSeededSampler
from medconv.errors import ConfigError
from medconv.ssl.folder import ImageFolder
from medconv.ssl.views import ViewDataset, ViewMode


class PretrainDataModule(L.LightningDataModule):
    """Args:
        source: where the images come from (a classification datamodule or an `ImageFolder`); its image_size,
            in_chans, batch_size, num_workers, seed and augmentation are used.
        views: "image" (one augmented view, `batch["image"]`, for masked image modelling) or "crops" (multi-crop,
            `batch["crops"]`, for DINO).
        n_global, n_local: multi-crop counts; global crops are `image_size`, local crops `local_size`
            (default 96/224 of it, a multiple of 32).
        global_scale, local_scale: area fraction ranges of the random-resized crops.
        batch_size, num_workers: override the source's.
        probe_samples: labelled train-split samples (stratified) the representation probes fit on.
    """

    def __init__(
        self,
        source: ClassificationDataModule | ImageFolder,
        views: ViewMode = "crops",
        n_global: int = 2,
        n_local: int = 4,
        local_size: tuple[int, int] | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        batch_size: int | None = None,
        num_workers: int | None = None,
        probe_samples: int = 64,
    ):
        super().__init__()
        if views not in ("image", "crops"):
            raise ConfigError(f"views must be 'image' (masked image modelling) or 'crops' (DINO multi-crop), not {views!r}")
        self.source = source
        if isinstance(source, ClassificationDataModule):
            source.labels_required = False  # a manifest without a label column is unlabelled data, not an error
        self.views = views
        self.n_global, self.n_local = n_global, n_local
        self.local_size = tuple(local_size) if local_size is not None else None
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.batch_size = batch_size if batch_size is not None else source.batch_size
        self.num_workers = num_workers if num_workers is not None else source.num_workers
        self.probe_samples = probe_samples
        self.dataset: ViewDataset | None = None

    # --- what the CLI links into the model ----------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.source.image_size)

    @property
    def in_chans(self) -> int:
        return self.source.in_chans

    @property
    def num_classes(self) -> int:
        """The source's classes (for probes); 0 for an unlabelled source."""
        return self.source.num_classes

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        return self.source.eval_groups

    @property
    def seed(self) -> int:
        return self.source.seed

    @property
    def labelled(self) -> bool:
        """Probes need two classes at least; an all-one-class (or all-empty) label column is unlabelled here."""
        return isinstance(self.source, ClassificationDataModule) and self.num_classes >= 2

    # --- setup ---------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        if isinstance(self.source, ClassificationDataModule) and self.source.label_fraction < 1:
            warnings.warn(
                f"pretraining uses every train-split image; the source's label_fraction={self.source.label_fraction} is ignored",
                stacklevel=2,
            )
            self.source.label_fraction = 1.0
        self.source.setup("fit")
        train = self.source.datasets.get("train")
        if train is None or len(train) == 0:
            raise ConfigError(f"{getattr(self.source, 'manifest', None) or 'the pretraining source'}: no train-split images to pretrain on")
        self.dataset = ViewDataset(
            train, self.views, self.image_size, self.n_global, self.n_local, self.local_size, self.global_scale, self.local_scale,
            seed=self.seed,
        )

    def train_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("fit")
        n = len(self.dataset)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(n, seed=self.seed),
            num_workers=self.num_workers,
            drop_last=n > self.batch_size,  # BatchNorm and the DINO centre want full batches
            persistent_workers=self.num_workers > 0,
        )

    # --- labelled subsets for representation probes --------------------------------------------------
    def probe_dataloaders(self) -> tuple[DataLoader, DataLoader] | None:
        """(stratified `probe_samples` train-split samples, the val split), evaluation transforms, labels kept;
        None when the source has no labels (or fewer than two classes) or no val split."""
        if not self.labelled:
            return None
        if self.dataset is None:
            self.setup("fit")
        source: ClassificationDataModule = self.source  # type: ignore[assignment]
        val = source.datasets.get("val")
        if val is None or len(val) == 0:
            return None
        train = source.make_dataset(source.splits["train"].reset_index(drop=True), "val")  # eval transforms
        labels = getattr(train, "labels", None)
        labels = np.asarray(source.splits["train"]["label_index"] if labels is None else labels)
        subset = Subset(train, stratified_indices(labels, self.probe_samples, self.seed).tolist())
        return self._eval_loader(subset), self._eval_loader(val)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    # --- which patients a checkpoint has seen --------------------------------------------------------
    def state_dict(self) -> dict:
        return self.source.state_dict() if hasattr(self.source, "state_dict") else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(state_dict)


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """About `n` indices with every class in proportion (at least one each); all of them when n >= len."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 7])
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = max(1, int(round(n * len(members) / len(labels))))
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen))
