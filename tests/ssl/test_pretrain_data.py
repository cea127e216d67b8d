"""PretrainDataModule over each source: a folder, mammograms (demo set / manifests), slide tiles; no labels needed,
held-out patients never seen, probes get labels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from medconv import keys
from medconv.errors import InputFileError, ManifestError
from medconv.mammo import MammoDataModule
from medconv.ssl.data import PretrainDataModule, stratified_indices
from medconv.ssl.folder import ImageFolder
from medconv.wsi import WSITileDataModule

pytestmark = pytest.mark.usefixtures("one_thread")



def _epoch(dm: PretrainDataModule) -> list[dict]:
    dm.prepare_data()
    dm.setup("fit")
    return list(dm.train_dataloader())


# --- a folder of images ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "rgb8.png"), rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "a" / "grey16.png"), np.full((50, 40), 16384, dtype=np.uint16))  # 0.25 of full scale
    cv2.imwrite(str(root / "a" / "b" / "photo.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "a" / "b" / "scan.tif"), rng.integers(0, 65535, (80, 80), dtype=np.uint16))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("in_chans", [1, 3])
def test_folder_multi_crop_batches(folder, in_chans):
    dm = PretrainDataModule(ImageFolder(str(folder), (64, 64), in_chans, batch_size=2, num_workers=0), "crops", n_local=2)
    batches = _epoch(dm)
    assert len(dm.dataset) == 4 and len(batches) == 2  # PNG 8/16-bit, JPEG, TIFF, found recursively
    crops = batches[0][keys.CROPS]
    assert [tuple(c.shape) for c in crops] == [(2, in_chans, 64, 64)] * 2 + [(2, in_chans, 32, 32)] * 2
    assert keys.LABEL not in batches[0]
    assert dm.image_size == (64, 64) and dm.in_chans == in_chans and dm.num_classes == 0 and dm.eval_groups == {}
    assert dm.probe_dataloaders() is None


def test_folder_single_view_scales_by_bit_depth(folder):
    dm = PretrainDataModule(ImageFolder(str(folder), (32, 32), 1, batch_size=1, num_workers=0), "image")
    dm.setup("fit")
    grey16 = next(i for i, f in enumerate(dm.dataset.source.files) if f.name == "grey16.png")
    image = dm.dataset[grey16][keys.IMAGE]
    assert image.shape == (1, 32, 32)
    torch.testing.assert_close(image, torch.full_like(image, (0.25 - 0.5) / 0.5), atol=1e-4, rtol=0)  # 16384/65535


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(InputFileError, match="no images"):
        PretrainDataModule(ImageFolder(str(tmp_path), num_workers=0)).prepare_data()
    with pytest.raises(InputFileError, match="missing"):
        PretrainDataModule(ImageFolder(str(tmp_path / "missing"), num_workers=0)).prepare_data()
    (tmp_path / "good.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputFileError, match="broken.png"):
        PretrainDataModule(ImageFolder(str(tmp_path), num_workers=0)).prepare_data()


# --- mammograms --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mammo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mammo")


def _mammo(root: Path, **kwargs) -> MammoDataModule:
    return MammoDataModule(
        image_size=(64, 48), batch_size=4, num_workers=0, demo_dir=str(root / "demo"), cache_dir=str(root / "cache"),
        demo_patients=10, demo_image_size=(256, 200), val_fraction=0.3, test_fraction=0.3, **kwargs,
    )


def test_mammo_pretraining_sees_train_patients_only(mammo_dir):
    dm = PretrainDataModule(_mammo(mammo_dir, label_fraction=0.5), "crops", n_local=2, batch_size=2)
    with pytest.warns(UserWarning, match="label_fraction"):
        dm.setup("fit")
    batches = _epoch(dm)
    splits = dm.source.splits
    train, held_out = set(splits["train"]["patient_id"]), set(splits["val"]["patient_id"]) | set(splits["test"]["patient_id"])
    assert train and held_out and not train & held_out
    seen = {p for b in batches for p in b[keys.PATIENT_ID]}
    assert seen == train  # every train patient, no held-out one (label_fraction did not shrink it)
    assert len(dm.dataset) == len(splits["train"])
    crops = batches[0][keys.CROPS]
    assert [tuple(c.shape) for c in crops] == [(2, 1, 64, 48)] * 2 + [(2, 1, 32, 32)] * 2
    assert dm.eval_groups == {"breast": ["exam_id", "laterality"], "exam": ["exam_id"]} and dm.num_classes == 2
    assert "fit_patient_hashes" in dm.state_dict()


def test_mammo_probe_loaders_have_labels(mammo_dir):
    dm = PretrainDataModule(_mammo(mammo_dir), "image", probe_samples=5)
    train_loader, val_loader = dm.probe_dataloaders()
    splits = dm.source.splits
    probe = [s for b in train_loader for s in zip(b[keys.PATIENT_ID], b[keys.LABEL].tolist(), strict=True)]
    assert len(probe) == 5 and {p for p, _ in probe} <= set(splits["train"]["patient_id"])
    assert {y for _, y in probe} == {0, 1}  # stratified: both classes
    val = [s for b in val_loader for s in zip(b[keys.PATIENT_ID], b[keys.LABEL].tolist(), strict=True)]
    assert sorted(p for p, _ in val) == sorted(splits["val"]["patient_id"])
    assert [y for _, y in val] == splits["val"]["label_index"].tolist()
    image = next(iter(dm.train_dataloader()))[keys.IMAGE]
    assert image.shape == (4, 1, 64, 48)


@pytest.mark.parametrize("label", ["negative", "", None])
def test_mammo_manifest_with_one_or_no_label(mammo_dir, label):
    """Unlabelled manifests pretrain: every label one class, every label empty, or no label column at all."""
    source = _mammo(mammo_dir)
    table = pd.read_csv(source.manifest_path(), dtype=str, keep_default_na=False)
    table = table[["image_path", "patient_id", "exam_id", "laterality", "view"]].copy()  # no masks, no boxes
    table["image_path"] = [str(source.manifest_path().parent / p) for p in table["image_path"]]
    if label is not None:
        table["label"] = label
    manifest = mammo_dir / f"unlabelled_{label or ('empty' if label == '' else 'none')}.csv"
    table.to_csv(manifest, index=False)
    dm = PretrainDataModule(_mammo(mammo_dir, manifest=str(manifest)), "crops", n_local=0)
    batch = _epoch(dm)[0]
    assert [tuple(c.shape) for c in batch[keys.CROPS]] == [(4, 1, 64, 48)] * 2
    assert dm.num_classes == 1 and dm.probe_dataloaders() is None
    assert not set(batch[keys.PATIENT_ID]) & set(dm.source.splits["val"]["patient_id"])
    if label is None:  # a classifier still refuses the same manifest: it needs labels
        with pytest.raises(ManifestError, match="missing column"):
            _mammo(mammo_dir, manifest=str(manifest)).setup("fit")


# --- slide tiles -------------------------------------------------------------------------------------------
def test_wsi_tiles_from_coords_stores(tmp_path):
    source = WSITileDataModule(image_size=(32, 32), tile_size=32, target_mpp=2.0, demo_dir=str(tmp_path / "wsi"), demo_slides=4,
                               demo_slide_size=(1024, 768), batch_size=4, num_workers=0, val_fraction=0.5)
    dm = PretrainDataModule(source, "crops", n_local=2, local_size=(16, 16))
    batches = _epoch(dm)
    train_slides, val_slides = set(source.splits["train"]["slide_id"]), set(source.splits["val"]["slide_id"])
    assert {s for b in batches for s in b[keys.SLIDE_ID]} == train_slides and not train_slides & val_slides
    assert [tuple(c.shape) for c in batches[0][keys.CROPS]] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert dm.eval_groups == {"slide": ["slide_id"]}
    train_loader, val_loader = dm.probe_dataloaders()
    probe = next(iter(train_loader))
    assert probe[keys.IMAGE].shape[1:] == (3, 32, 32) and set(probe[keys.SLIDE_ID]) <= train_slides
    assert {s for b in val_loader for s in b[keys.SLIDE_ID]} == val_slides
    assert torch.cat([b[keys.LABEL] for b in val_loader]).tolist() == source.datasets["val"].labels.tolist()


def test_stratified_indices():
    labels = np.array([0] * 90 + [1] * 10)
    idx = stratified_indices(labels, 20, seed=0)
    assert len(idx) == 20 and (labels[idx] == 1).sum() == 2
    assert list(stratified_indices(labels[:5], 10)) == [0, 1, 2, 3, 4]
    assert (labels[stratified_indices(labels, 5)] == 1).sum() == 1  # at least one of each class
