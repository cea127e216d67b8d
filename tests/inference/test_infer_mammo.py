"""Mammogram exam inference: predictions per image, breast and exam (max over views), and Grad-CAM maps and overlays
in the original image's pixels (the crop, mirror and resize of the training preprocessing undone). Whether the maps
point at lesions is tests/inference/test_saliency.py's, on a trained model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from medconv.inference.saliency import to_original
from medconv.io.mammo import read_mammogram
from medconv.mammo.prep import preprocess, transform_mask

IMAGE_SIZE = (64, 48)


@pytest.fixture(scope="module")
def demo_exams(tmp_path_factory):
    from medconv.demo.mammo import generate_demo_mammo

    out = tmp_path_factory.mktemp("demo_mammo")
    return generate_demo_mammo(out, n_patients=2, image_size=(256, 200), pixel_spacing_mm=0.8, lesion_contrast=(0.6, 0.9),
                               positive_fraction=1.0)


@pytest.fixture(scope="module")
def mammo_run(tmp_path_factory):
    """A run directory as `medconv fit` leaves it (config.yaml + checkpoint) for a tiny untrained resnet."""
    from medconv.models import TimmBackbone
    from medconv.tasks import ClassificationModule

    run = tmp_path_factory.mktemp("mammo_run")
    backbone_args = {"name": "resnet50d", "model_args": {"layers": [1, 1, 1, 1], "channels": [8, 16, 24, 32], "stem_width": 8}}
    config = {
        "model": {"class_path": "medconv.tasks.ClassificationModule",
                  "init_args": {"backbone": {"class_path": "medconv.models.TimmBackbone", "init_args": backbone_args}}},
        "data": {"class_path": "medconv.mammo.MammoDataModule",
                 "init_args": {"image_size": list(IMAGE_SIZE), "in_chans": 1, "manifest": None, "classes": None}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    module = ClassificationModule(TimmBackbone(in_chans=1, img_size=IMAGE_SIZE, **backbone_args), num_classes=2)
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"num_classes": 2}}, run / "checkpoints" / "best.ckpt")
    return run


def test_saliency_maps_back_onto_the_lesion_in_original_pixels(demo_exams):
    rows = pd.read_csv(demo_exams, keep_default_na=False)
    for row in rows[rows["mask_path"] != ""].to_dict("records"):  # left and right breasts: mirrored and not
        pixels = read_mammogram(demo_exams.parent / row["image_path"]).pixels
        lesion = np.asarray(Image.open(demo_exams.parent / row["mask_path"])) > 0
        prep = preprocess(pixels, IMAGE_SIZE, laterality=row["laterality"])
        saliency = transform_mask(lesion, prep).astype(np.float32)  # a hand-made map: 1 on the lesion in the model's frame
        back = to_original(saliency, prep, pixels.shape)
        assert back.shape == pixels.shape
        peak_y, peak_x = np.unravel_index(np.argmax(back), back.shape)
        ys, xs = np.nonzero(lesion)
        assert ys.min() - 4 <= peak_y <= ys.max() + 4 and xs.min() - 4 <= peak_x <= xs.max() + 4
        iou = ((back > 0.5) & lesion).sum() / ((back > 0.5) | lesion).sum()
        assert iou > 0.5, (row["image_path"], iou)


def test_exam_inference_writes_predictions_maps_and_overlays_in_original_size(mammo_run, demo_exams, tmp_path):
    from medconv.inference.cli import main

    out = tmp_path / "out"
    assert main([str(mammo_run), str(demo_exams), "--out", str(out)]) == 0
    images = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(images) == 8 and (images["status"] == "ok").all()
    assert np.allclose(images["prob_negative"] + images["prob_positive"], 1, atol=1e-5)
    for row in images.to_dict("records"):
        original = read_mammogram(row["image_path"]).pixels
        with Image.open(out / row["overlay"]) as im:
            assert im.size == (original.shape[1], original.shape[0]) and im.mode == "RGB"
        saliency = np.load(out / row["saliency_map"])  # beside the overlay, in the original's pixels
        assert row["saliency_map"] == f"saliency/{row['image_id']}.npy"
        assert saliency.dtype == np.float16 and saliency.shape == original.shape
        assert 0 <= saliency.min() and saliency.max() <= 1
    breast = pd.read_csv(out / "predictions_breast.csv")
    assert len(breast) == 4 and (breast["n_images"] == 2).all()
    for rec in breast.to_dict("records"):  # a breast scores as its most suspicious view
        views = images[(images["exam_id"] == rec["exam_id"]) & (images["laterality"] == rec["laterality"])]
        assert rec["prob_positive"] == pytest.approx(views["prob_positive"].max())
    exam = pd.read_csv(out / "predictions_exam.csv")
    assert len(exam) == 2 and (exam["n_images"] == 4).all()
    # a rerun keeps the images already done, and redoes one whose map is missing
    (out / images["saliency_map"].iloc[0]).unlink()
    assert main([str(mammo_run), str(demo_exams), "--out", str(out)]) == 0
    rerun = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert rerun["status"].tolist() == ["ok"] + ["skipped"] * 7
    assert (out / rerun["saliency_map"].iloc[0]).is_file()
