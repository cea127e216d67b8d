"""Tiles as uint8 from the loader, normalised on the model's device: `InferenceTiles` (the loader's dataset) and
`TileModule` (the LightningModule every slide pipeline runs: tile classifiers, encoders).

Loader workers then only read and (when needed) resize: a uint8 tile is a quarter of the float32 bytes that
cross from worker to main process, and the float work moves to where the model runs (the GPU, or the
model's own CPU threads). Measured on the 2-core CPU: loader 850 tiles/s instead of 400 (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

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
        x, y = (int(v) for v in self.slides[slide_index].coords[tile_index])
        return {keys.IMAGE: torch.from_numpy(np.ascontiguousarray(self.tile(slide_index, tile_index))).permute(2, 0, 1),
                keys.SLIDE_ID: self.slides[slide_index].slide_id, keys.X: x, keys.Y: y}


PADDING_ID = ""  # slide id of the placeholder tile a process without slides scores (its result is dropped)


def padding_batch(image_size: tuple[int, int], channels: int = 3) -> dict[str, Any]:
    """One blank tile: Lightning wants a batch on every process, also on one whose slides are all done or
    failed (a rerun, or fewer slides than processes)."""
    return {keys.IMAGE: torch.zeros((1, channels, *image_size), dtype=torch.uint8), keys.SLIDE_ID: [PADDING_ID],
            keys.X: torch.zeros(1, dtype=torch.int64), keys.Y: torch.zeros(1, dtype=torch.int64)}


class TileModule(L.LightningModule):
    """uint8 batches in, one row of values per tile out (`key`), normalised with the training's mean/std on the
    device (Lightning's precision plugin adds AMP around `predict_step`). A batch that carries a read error
    (`keys.ERROR`: the loader could not read the slide's tiles) is passed on without running the model, so the
    writer can report that slide and the others go on.

    `channels_last`: NHWC weights and inputs, whatever the training used: the same numbers, and oneDNN's and
    cuDNN's convolutions are faster in it (resnet18d 1.4x in fp32 and 1.6x in bf16 on the CPU of
    docs/benchmarks.md; ConvNeXt and PVT-v2 unchanged). The loader's batches are NHWC already."""

    key = "values"

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = True):
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(images)).float()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {keys.SLIDE_ID: batch[keys.SLIDE_ID], keys.X: batch[keys.X], keys.Y: batch[keys.Y]}
        if keys.ERROR in batch:
            return {**out, keys.ERROR: batch[keys.ERROR]}
        return {**out, self.key: self(batch[keys.IMAGE]).cpu()}
