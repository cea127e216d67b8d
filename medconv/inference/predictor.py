"""Tiles as uint8 from the loader, normalised on the model's device.

Loader workers then only read and (when needed) resize: a uint8 tile is a quarter of the float32 bytes that
cross from worker to main process, and the float work moves to where the model runs (the GPU, or the
model's own CPU threads). Measured on the 2-core CPU: loader 850 tiles/s instead of 400 (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch import nn

from medconv import keys
from medconv.wsi.tile_dataset import TileDataset


class InferenceTiles(TileDataset):
    """`TileDataset` for inference: samples are uint8 (3, H, W) tiles at the model's image size, with
    slide_id, x, y (one slide reader per worker process, as in training)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        slide_index, tile_index = self.locate(index)
        image = self.read_tile(slide_index, tile_index)
        if self.image_size is not None and image.shape[:2] != self.image_size:
            image = cv2.resize(image, (self.image_size[1], self.image_size[0]), interpolation=cv2.INTER_AREA)
        x, y = (int(v) for v in self.slides[slide_index].coords[tile_index])
        return {keys.IMAGE: torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                keys.SLIDE_ID: self.slides[slide_index].slide_id, keys.X: x, keys.Y: y}


PADDING_ID = ""  # slide id of the placeholder tile a process without slides scores (its result is dropped)


class PaddingTile(torch.utils.data.Dataset):
    """One blank tile: Lightning wants a batch on every process, also on one whose slides are all done or
    failed (a rerun, or fewer slides than processes)."""

    def __init__(self, image_size: tuple[int, int], channels: int = 3):
        self.image_size, self.channels = tuple(image_size), channels

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {keys.IMAGE: torch.zeros((self.channels, *self.image_size), dtype=torch.uint8), keys.SLIDE_ID: PADDING_ID,
                keys.X: 0, keys.Y: 0}


class TilePredictor(L.LightningModule):
    """Wraps a trained classifier: uint8 batches in, class probabilities out (normalised with the training's
    mean/std on the device; Lightning's precision plugin adds AMP around `predict_step`).

    `channels_last`: NHWC weights and inputs, whatever the training used: the same numbers, and oneDNN's and
    cuDNN's convolutions are faster in it (resnet18d 1.4x in fp32 and 1.6x in bf16 on the CPU of
    docs/benchmarks.md; ConvNeXt and PVT-v2 unchanged)."""

    def __init__(self, classifier: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = True):
        super().__init__()
        self.classifier = classifier.to(memory_format=torch.channels_last) if channels_last else classifier
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        return self.classifier(x).float().softmax(1)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"probs": self(batch[keys.IMAGE]).cpu(), keys.SLIDE_ID: batch[keys.SLIDE_ID], keys.X: batch[keys.X],
                keys.Y: batch[keys.Y]}
