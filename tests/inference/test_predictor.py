"""Inference normalises uint8 tiles on the model's device exactly as training normalised them in the loader."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medconv.inference.slide_scores import TilePredictor
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor


def test_device_normalisation_equals_the_training_transform():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    tiles = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    expected = classifier(torch.stack([to_tensor(t, IMAGENET_MEAN, IMAGENET_STD) for t in tiles])).softmax(1)
    predictor = TilePredictor(classifier, IMAGENET_MEAN, IMAGENET_STD).eval()  # NHWC: the same numbers, faster convs
    assert classifier[0].weight.is_contiguous(memory_format=torch.channels_last)
    got = predictor(torch.from_numpy(tiles).permute(0, 3, 1, 2))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    out = predictor.predict_step({"image": torch.from_numpy(tiles).permute(0, 3, 1, 2), "slide_id": ["s"] * 5,
                                  "x": torch.arange(5), "y": torch.zeros(5)}, 0)
    assert out["probs"].shape == (5, 3) and out["slide_id"] == ["s"] * 5


def test_inference_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    import medconv.precision as lc

    assert isinstance(lc.native_cpu_bf16(), bool)  # this machine's answer, whatever it is
    monkeypatch.setattr(lc, "native_cpu_bf16", lambda: True)
    assert lc.inference_precision("cpu") == "bf16-mixed"
    monkeypatch.setattr(lc, "native_cpu_bf16", lambda: False)
    assert lc.inference_precision("cpu") == "32-true"
    assert lc.inference_precision("gpu") == lc.default_precision()  # AMP on GPU, as in training


def test_bf16_autocast_on_cpu_keeps_tile_probabilities_close_to_fp32():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(8, 2)).eval()
    predictor = TilePredictor(classifier, IMAGENET_MEAN, IMAGENET_STD).eval()
    tiles = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    with torch.inference_mode():
        fp32 = predictor(tiles)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = predictor(tiles)
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.sum(1), torch.ones(4))  # softmax in fp32
    assert (bf16 - fp32).abs().max() < 2e-2
