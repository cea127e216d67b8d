"""Bags of tile images for end-to-end MIL: each step, a sample of a slide's tiles goes through the encoder.

Tiles are read exactly as the tile classifier reads them (`medconv.wsi.tile_dataset.TileDataset`: one slide
handle per worker, the same resize, augmentation and normalisation); this module only decides which tiles make
up a slide's bag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.samplers import decode_draw
from medconv.errors import InputFileError
from medconv.wsi.tile_dataset import SlideTiles, TileDataset
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD


class TileBagDataset(Dataset):
    """Samples: image (k, 3, H, W) normalised tiles, coords (k, 2) level-0, label (the slide's), slide_id,
    patient_id, image_id.

    `tiles_per_bag`: k. Training draws k of a slide's tiles at random each epoch (seeded by the sampler's draw, so
    resumes replay); evaluation takes k evenly spaced tiles (the same every time; None: all of them). A slide with
    fewer tiles gives them all.
    """

    def __init__(
        self,
        slides: Sequence[SlideTiles],
        labels: Sequence[int],
        tiles_per_bag: int | None = 16,
        train: bool = False,
        transform: A.BaseCompose | None = None,
        image_size: tuple[int, int] | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        seed: int = 0,
        backend: str = "auto",
    ):
        empty = [s.slide_id for s in slides if not len(s.coords)]
        if empty:
            raise InputFileError(f"slides {empty[:5]} have no tiles in their coords stores; re-tile them or drop them from the manifest.")
        self.tiles = TileDataset(list(slides), transform, image_size, mean, std, seed=seed, backend=backend)
        self.labels = [int(y) for y in labels]
        self.tiles_per_bag = tiles_per_bag
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.tiles.slides)

    def choose(self, index: int, draw: int) -> np.ndarray:
        """Indices (sorted) of the tiles of slide `index` in this draw's bag."""
        n = len(self.tiles.slides[index].coords)
        k = n if self.tiles_per_bag is None else min(self.tiles_per_bag, n)
        if not self.train:
            return np.linspace(0, n - 1, k).round().astype(int)
        return np.sort(np.random.default_rng((self.seed, draw, index)).choice(n, k, replace=False))

    def __getitem__(self, value: int) -> dict[str, Any]:
        index, draw = decode_draw(int(value), len(self))
        st = self.tiles.slides[index]
        offset, total = self.tiles.first_index(index), len(self.tiles)
        chosen = self.choose(index, draw)
        # The tile dataset decodes (tile, draw) the same way and seeds each tile's augmentation from it.
        images = torch.stack([self.tiles[offset + int(t) + total * draw][keys.IMAGE] for t in chosen])
        return {
            keys.IMAGE: images,
            keys.COORDS: torch.from_numpy(st.coords[chosen].astype(np.int64)),
            keys.LABEL: self.labels[index],
            keys.SLIDE_ID: st.slide_id,
            keys.IMAGE_ID: st.slide_id,
            keys.PATIENT_ID: st.patient_id,
        }

    def close(self) -> None:
        self.tiles.close()
