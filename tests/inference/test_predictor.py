"""Inference normalises uint8 tiles on the model's device exactly as training normalised them in the loader."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medconv.inference.predictor import TilePredictor
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor


def test_device_normalisation_equals_the_training_transform():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    tiles = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    expected = classifier(torch.stack([to_tensor(t, IMAGENET_MEAN, IMAGENET_STD) for t in tiles])).softmax(1)
    predictor = TilePredictor(classifier, IMAGENET_MEAN, IMAGENET_STD).eval()
    got = predictor(torch.from_numpy(tiles).permute(0, 3, 1, 2))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    out = predictor.predict_step({"image": torch.from_numpy(tiles).permute(0, 3, 1, 2), "slide_id": ["s"] * 5,
                                  "x": torch.arange(5), "y": torch.zeros(5)}, 0)
    assert out["probs"].shape == (5, 3) and out["slide_id"] == ["s"] * 5
