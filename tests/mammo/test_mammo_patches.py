"""Mammogram patches: grid inside the breast at a physical size, lesion-centred positives, labels by overlap."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from medconv import keys
from medconv.errors import ManifestError
from medconv.mammo.patch_prep import (
    UNLABELLED,
    PatchOptions,
    boxes_mask,
    lesion_centred_positions,
    lesion_overlaps,
    plan_patches,
)
from medconv.mammo.patches import MammoPatchDataModule
from medconv.tiling.geometry import mask_fractions


def _breast(h=200, w=160):
    """Half-disc against the left edge (chest wall left), like a prepared CC view."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx / 140.0) ** 2 + ((yy - h / 2) / 90.0) ** 2 <= 1


def test_grid_stays_in_the_breast_and_lesion_patches_centre_on_lesions():
    breast = _breast()
    lesion = boxes_mask([[60, 90, 70, 100]], breast.shape)  # 10x10 px lesion centred at (65, 95)
    opts = PatchOptions(patch_size=32, min_breast=0.5, lesion_patches=5, jitter=0.25, min_overlap=0.5)
    pos, labels, overlaps = plan_patches(breast, lesion, opts, np.random.default_rng(0))
    n_grid = len(pos) - 5
    assert n_grid > 5
    assert (mask_fractions(pos[:n_grid], 32, breast, 1.0) >= 0.5).all()
    assert not (pos[:n_grid, 0] >= 140).any()  # nothing past the breast's far edge
    centred = pos[n_grid:]
    np.testing.assert_array_equal(centred[0], [65 - 16, 95 - 16])  # first one exactly centred
    assert (np.abs(centred + 16 - [65, 95]) <= 0.25 * 32 + 1).all()
    assert (labels[n_grid:] == 1).all() and (overlaps[n_grid:] == 1).all()  # the whole lesion is inside each
    # grid patches: negative when they miss the lesion, positive or dropped when they touch it
    touching = overlaps[:n_grid] > 0
    assert (labels[:n_grid][~touching] == 0).all()
    assert set(labels[:n_grid][touching]) <= {1, UNLABELLED}


def test_overlap_is_relative_to_the_smaller_of_lesion_and_patch():
    lesion = np.zeros((100, 100), bool)
    lesion[10:14, 10:14] = True  # small calcification: 16 px
    lesion[40:100, 40:100] = True  # big mass: 3600 px
    pos = np.array([[0, 0], [12, 12], [40, 40], [70, 70], [0, 60]])
    got = lesion_overlaps(pos, 20, lesion)
    np.testing.assert_allclose(got, [1.0, 4 / 16, 1.0, 1.0, 0.0])


def test_lesion_positions_stay_inside_small_images():
    lesion = np.zeros((40, 40), bool)
    lesion[0:3, 36:40] = True  # in a corner
    pos = lesion_centred_positions(lesion, 32, 4, 0.5, np.random.default_rng(1))
    assert pos.shape == (4, 2)
    assert (pos >= 0).all() and (pos <= 8).all()


def _png16(path, image):
    cv2.imwrite(str(path), np.round(image * 65535).astype(np.uint16))


@pytest.fixture()
def manifest(tmp_path):
    """Four patients, one lesion each in two of them, as 16-bit PNGs at 0.1 mm/px (spacing in the manifest)."""
    rows = []
    for p in range(4):
        breast = _breast(400, 320).astype(np.float32) * 0.5
        boxes = []
        if p % 2:
            breast[180:200, 100:120] = 0.95
            boxes = [[100, 180, 120, 200]]
        if p == 3:  # right breast stored mirrored: the patches must still see the chest wall on the left
            breast, boxes = breast[:, ::-1], [[320 - 120, 180, 320 - 100, 200]]
        _png16(tmp_path / f"p{p}.png", breast)
        rows.append({"image_path": f"p{p}.png", "label": "positive" if p % 2 else "negative", "patient_id": f"P{p}",
                     "boxes": json.dumps(boxes), "pixel_spacing_mm": 0.1})
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_datamodule_cuts_physical_patches_with_labels(manifest, tmp_path):
    dm = MammoPatchDataModule(
        manifest=str(manifest), image_size=(16, 16), spacing_mm=0.2, num_workers=0, val_fraction=0.5,
        cache_dir=str(tmp_path / "cache"), lesion_patches=3, batch_size=4,
    )
    assert dm.classes == ["background", "lesion"]
    dm.setup("fit")
    assert set(dm.splits["train"]["label"]) == {"background", "lesion"}  # stratified by lesion presence
    for name in ("train", "val"):
        ds = dm.datasets[name]
        assert ds.labels.sum() >= 3 and (ds.labels == 0).sum() > ds.labels.sum()
        for i in np.flatnonzero(ds.labels == 1):
            s = ds[int(i)]
            assert s[keys.IMAGE].shape == (1, 16, 16) and s[keys.LABEL] == 1
            assert s[keys.X] < 80  # chest wall left: the lesion sits 10-12 mm from it, also in the mirrored file
            if name == "train":  # augmented: intensities move
                continue
            bright = (s[keys.IMAGE][0].numpy() * 0.5 + 0.5) > 0.9  # the lesion (0.95) is in every positive patch
            assert bright.sum() >= 25  # 20 px at 0.1 mm = 10 px at 0.2 mm; at least half of it
    assert list((tmp_path / "cache").glob("*.npy"))  # images resampled once, then memory-mapped
    batch = next(iter(dm.train_dataloader()))
    assert batch[keys.IMAGE].shape == (4, 1, 16, 16)


def test_missing_spacing_is_reported_per_file(manifest, tmp_path):
    import pandas as pd

    table = pd.read_csv(manifest)
    table["pixel_spacing_mm"] = ""
    table.to_csv(manifest, index=False)
    dm = MammoPatchDataModule(manifest=str(manifest), image_size=(16, 16), num_workers=0, val_fraction=0.5, cache_dir=None)
    with pytest.raises(ManifestError, match="4 problem") as err:
        dm.setup("fit")
    assert all(f"p{i}.png: no pixel spacing" in str(err.value) for i in range(4))
    assert "pixel_spacing_mm column" in str(err.value)


def test_default_spacing_and_bad_boxes(manifest, tmp_path):
    import pandas as pd

    table = pd.read_csv(manifest)
    table["pixel_spacing_mm"] = ""
    table.to_csv(manifest, index=False)
    dm = MammoPatchDataModule(manifest=str(manifest), image_size=(16, 16), num_workers=0, val_fraction=0.5,
                              cache_dir=None, pixel_spacing_mm=0.1)  # for files that carry none, as these PNGs
    dm.setup("fit")
    assert dm.datasets["val"].labels.sum() >= 3
    table.loc[1, "boxes"] = "[[1, 2, 3]]"
    table.to_csv(manifest, index=False)
    dm = MammoPatchDataModule(manifest=str(manifest), image_size=(16, 16), num_workers=0, cache_dir=None)
    with pytest.raises(ManifestError, match=r"row 3: .*p1.png: boxes '\[\[1, 2, 3\]\]' are not a JSON list"):
        dm.setup("fit")


def test_preparation_never_forks_and_threads_give_the_same_plan(manifest, tmp_path, monkeypatch):
    """Regression: preparation forked a process pool after torch/OpenCV had started their thread pools, and the
    children hung in cv2.setNumThreads. Workers are threads now; the plan must not depend on how many."""
    import os

    import torch

    torch.ones(64, 64) @ torch.ones(64, 64)  # thread pools running, as in a training process
    cv2.resize(np.ones((512, 512), np.float32), (256, 256), interpolation=cv2.INTER_AREA)

    def no_fork():
        raise AssertionError("patch preparation must not fork")

    def plans(workers: int) -> dict:
        dm = MammoPatchDataModule(manifest=str(manifest), image_size=(16, 16), num_workers=workers, val_fraction=0.5,
                                  cache_dir=str(tmp_path / f"cache{workers}"), lesion_patches=3)
        with monkeypatch.context() as m:
            m.setattr(os, "fork", no_fork)
            return dm.prepared()

    serial, threaded = plans(0), plans(2)
    assert serial.keys() == threaded.keys() and len(serial) == 4
    for path, res in serial.items():
        np.testing.assert_array_equal(res["positions"], threaded[path]["positions"])
        np.testing.assert_array_equal(res["labels"], threaded[path]["labels"])


def test_plan_does_not_depend_on_where_the_data_set_lives(manifest, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(manifest.parent, moved, ignore=shutil.ignore_patterns("elsewhere", "cache*"))

    def plans(path):
        dm = MammoPatchDataModule(manifest=str(path), image_size=(16, 16), num_workers=0, val_fraction=0.5,
                                  cache_dir=None, lesion_patches=3, jitter=0.5)
        return [(res["positions"], res["labels"]) for res in dm.prepared().values()]

    for (pos_a, lab_a), (pos_b, lab_b) in zip(plans(manifest), plans(moved / manifest.name), strict=True):
        np.testing.assert_array_equal(pos_a, pos_b)
        np.testing.assert_array_equal(lab_a, lab_b)
