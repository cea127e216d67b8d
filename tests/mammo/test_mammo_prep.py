"""Breast mask, chest-wall side, and the crop/flip/resize frame that images and annotations share."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medconv.demo.mammo import generate_demo_mammo
from medconv.errors import InputFileError
from medconv.io.mammo import read_mammogram
from medconv.mammo.prep import breast_mask, infer_laterality, preprocess, transform_boxes, transform_mask


def synthetic_breast(h: int = 300, w: int = 240, chest_wall_left: bool = True, marker: bool = True) -> np.ndarray:
    """Half-ellipse against one edge plus a bright burned-in marker in the far corner."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w), 0.02, np.float32)
    breast = ((yy - h / 2) / (0.4 * h)) ** 2 + (xx / (0.6 * w)) ** 2 < 1
    image[breast] = 0.5 + 0.1 * np.sin(yy[breast] / 7.0)
    if marker:
        image[10:30, w - 30 : w - 12] = 0.95
    return image if chest_wall_left else image[:, ::-1].copy()


def test_breast_mask_keeps_the_breast_and_drops_the_marker() -> None:
    image = synthetic_breast()
    mask = breast_mask(image)
    assert mask.dtype == bool and mask.shape == image.shape
    assert not mask[10:30, 228:].any()
    truth = image > 0.3
    truth[10:30, 210:] = False
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95


def test_blank_image_has_no_breast_and_preprocess_names_the_source() -> None:
    black = np.zeros((200, 160), np.float32)
    assert not breast_mask(black).any()
    with pytest.raises(InputFileError, match="no breast found in scans/blank.png"):
        preprocess(black, (128, 64), source="scans/blank.png")


@pytest.mark.parametrize("left", [True, False])
def test_infer_laterality_finds_the_chest_wall(left: bool) -> None:
    assert infer_laterality(synthetic_breast(chest_wall_left=left)) == ("L" if left else "R")


@pytest.mark.parametrize("left", [True, False])
def test_preprocess_puts_the_chest_wall_left_and_pads_right_bottom(left: bool) -> None:
    image = synthetic_breast(chest_wall_left=left)
    prep = preprocess(image, (128, 128), source="x")
    assert prep.image.shape == (128, 128) and prep.image.dtype == np.float32
    assert prep.mask.shape == (128, 128) and prep.mask.dtype == bool
    assert prep.flipped is (not left) and prep.laterality == ("L" if left else "R")
    rh, rw = prep.resized_hw
    assert rh == 128 and rw < 128  # tall crop: height fills, width is padded on the right
    assert (prep.image[:, rw:] == 0).all() and not prep.mask[:, rw:].any()
    rows = prep.mask[40:90]
    assert rows[:, 0].all() and not rows[:, rw - 1].all()  # the chest wall column is full, the nipple side is not
    assert prep.image.max() < 0.9  # the marker was zeroed with the background
    y0, x0, y1, x1 = prep.crop_box
    assert y1 - y0 == pytest.approx(0.8 * 300, abs=6) and x1 - x0 == pytest.approx(0.6 * 240, abs=6)
    assert prep.scale == pytest.approx(128 / (y1 - y0))


def test_given_laterality_is_recorded_but_the_image_decides_the_flip() -> None:
    prep = preprocess(synthetic_breast(chest_wall_left=True), (64, 64), laterality="R")
    assert prep.laterality == "R" and not prep.flipped


@pytest.mark.parametrize("left", [True, False])
def test_box_transform_matches_the_mask_transform(left: bool) -> None:
    image = synthetic_breast(chest_wall_left=left)
    prep = preprocess(image, (160, 96))
    lesion = np.zeros(image.shape, bool)
    x0, y0, x1, y1 = (40, 120, 90, 170) if left else (150, 120, 200, 170)
    lesion[y0:y1, x0:x1] = True
    moved = transform_mask(lesion, prep)
    ys, xs = np.nonzero(moved)
    mask_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    box = transform_boxes([[x0, y0, x1, y1]], prep)
    assert box.shape == (1, 4)
    np.testing.assert_allclose(box[0], mask_box, atol=1.0)
    # The lesion sits in the same place relative to the breast before and after.
    assert (prep.image[moved] > 0.3).all()


def test_boxes_outside_the_crop_collapse() -> None:
    prep = preprocess(synthetic_breast(), (64, 64))
    box = transform_boxes([[230, 280, 239, 299]], prep)[0]  # bottom-right corner, outside the breast crop
    assert (box[2] - box[0]) * (box[3] - box[1]) == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    return generate_demo_mammo(out, n_patients=3, seed=3, image_size=(256, 200), pixel_spacing_mm=0.8)


def test_generated_images_are_flipped_by_laterality(demo: Path) -> None:
    frame = pd.read_csv(demo, keep_default_na=False)
    for row in frame.itertuples():
        pixels = read_mammogram(demo.parent / row.image_path).pixels
        assert infer_laterality(pixels) == row.laterality, row.image_path
        prep = preprocess(pixels, (128, 64), source=row.image_path)
        assert prep.flipped == (row.laterality == "R")
        left_col, right_col = prep.mask[:, 0].mean(), prep.mask[:, prep.resized_hw[1] - 1].mean()
        assert left_col > 0.6 and right_col < 0.3, row.image_path


def test_generated_lesion_boxes_follow_the_image(demo: Path) -> None:
    frame = pd.read_csv(demo, keep_default_na=False)
    positives = frame[frame.label == "positive"]
    assert len(positives) > 0
    for row in positives.itertuples():
        prep = preprocess(read_mammogram(demo.parent / row.image_path).pixels, (128, 64))
        lesion = cv2.imread(str(demo.parent / row.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        moved = transform_mask(lesion, prep)
        ys, xs = np.nonzero(moved)
        box = transform_boxes(json.loads(row.boxes), prep)[0]
        np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)
