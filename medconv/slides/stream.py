"""One process's slides as one stream of uint8 batches, each slide read as soon as it is tiled.

The main process tiles the slides one after another in a background thread (`SlideInferenceData` in data.py)
while the DataLoader workers read the tiles of the slides already tiled and the model scores them, so neither
the model nor the loader waits for the whole list to be tiled first (on a GPU that wait was all tiling time).

The order is exact without any exchange between workers: batches never straddle slides, so every worker knows
the batch sequence (slide after slide, ceil(n / batch) batches each) from the tile counts the preparer publishes,
and worker w yields the batches whose index is w modulo the worker count, which is the order in which the
DataLoader collects from its workers. A slide whose tiles cannot be read gives `keys.ERROR` batches in its place,
so its failure is reported and the rest of the stream keeps its order.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medconv import keys
from medconv.errors import MedconvError
from medconv.slides.tile_module import InferenceTiles, padding_batch

PENDING, READY, NOTHING = 0, 1, 2  # per slide: not tiled yet, tiled with tiles to read, nothing to read


class SlideBoard:
    """What the preparer publishes per slide, in memory the worker processes share: status and tile count."""

    def __init__(self, n: int):
        self.status = multiprocessing.RawArray("b", max(n, 1))
        self.count = multiprocessing.RawArray("q", max(n, 1))

    def ready(self, index: int, n_tiles: int) -> None:
        self.count[index] = n_tiles  # before the status: a reader that sees READY sees the count
        self.status[index] = READY

    def nothing(self, index: int) -> None:
        self.status[index] = NOTHING


class SlideStream(IterableDataset):
    """Batches (dicts: image (B, C, H, W) uint8 in NHWC memory, slide_id, x, y) of `slides`, in order.

    `slides`: (slide id, slide path, coords store path, mpp override) per slide, in the preparer's order.
    """

    def __init__(self, slides: list[tuple[str, Path, Path, float | None]], board: SlideBoard, image_size: tuple[int, int],
                 batch_size: int, backend: str = "auto", poll_s: float = 0.002):
        self.slides = slides
        self.board = board
        self.image_size = tuple(image_size)
        self.batch_size = int(batch_size)
        self.backend = backend
        self.poll_s = poll_s
        self._parent = os.getpid()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = 0  # the batch's place in this process's whole stream
        for k, slide in enumerate(self.slides):
            if self._wait(k) != READY:
                continue
            n_batches = -(-int(self.board.count[k]) // self.batch_size)
            mine = [b for b in range(n_batches) if (index + b) % workers == worker]
            if mine:
                yield from self._slide_batches(slide, int(self.board.count[k]), mine)
            index += n_batches
        if index == 0 and worker == 0:
            yield padding_batch(self.image_size)

    def _slide_batches(self, slide: tuple[str, Path, Path, float | None], n_tiles: int,
                       batches: list[int]) -> Iterator[dict[str, Any]]:
        from medconv.wsi.tile_dataset import load_slide_tiles

        name, path, coords_path, mpp = slide
        error, dataset = None, None
        try:
            tiles = load_slide_tiles(path, coords_path, 0, slide_id=name, mpp=mpp)
            if len(tiles.coords) != n_tiles:
                raise MedconvError(f"{coords_path}: the coords store changed while the slide was read; rerun.")
            dataset = InferenceTiles([tiles], None, self.image_size, backend=self.backend)
        except Exception as err:  # noqa: BLE001 -- reported as the slide's failure, the stream goes on
            error = describe(err)
        try:
            for b in batches:
                if error is None:
                    try:
                        yield self._read(dataset, tiles.coords, b)
                        continue
                    except Exception as err:  # noqa: BLE001 -- a corrupt tile: the slide fails, not the run
                        error = describe(err)
                yield error_batch(name, error, self.image_size)
        finally:
            if dataset is not None:
                dataset.close()

    def _read(self, dataset: InferenceTiles, coords: np.ndarray, b: int) -> dict[str, Any]:
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, len(coords))
        xy = torch.from_numpy(coords[start:stop].astype(np.int64))
        return {keys.IMAGE: read_batch(dataset, start, stop), keys.SLIDE_ID: [dataset.slides[0].slide_id] * len(xy),
                keys.X: xy[:, 0].clone(), keys.Y: xy[:, 1].clone()}

    def _wait(self, k: int) -> int:
        while (status := int(self.board.status[k])) == PENDING:
            if os.getppid() != self._parent and os.getpid() != self._parent:
                raise RuntimeError("the process that tiles the slides has gone; stopping this loader worker")
            time.sleep(self.poll_s)
        return status


def read_batch(dataset: InferenceTiles, start: int, stop: int) -> torch.Tensor:
    """Tiles start..stop of the dataset's first slide as one uint8 (B, C, H, W) tensor in NHWC memory."""
    images = np.empty((stop - start, *dataset.image_size, 3), np.uint8)
    for i in range(start, stop):
        images[i - start] = dataset.tile(0, i)
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def describe(err: BaseException) -> str:
    """The message a summary row shows: ours as written, others with their type and where they came from."""
    if isinstance(err, MedconvError):
        return str(err)
    message = f"{type(err).__name__}: {err}"
    if err.__traceback__ is not None:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        message += f" (at {Path(frame.filename).name}:{frame.lineno})"
    return message


def error_batch(name: str, error: str, image_size: tuple[int, int]) -> dict[str, Any]:
    """The place of a batch that could not be read: no tiles, the slide and why."""
    empty = torch.zeros(0, dtype=torch.int64)
    return {keys.IMAGE: torch.zeros((0, 3, *image_size), dtype=torch.uint8), keys.SLIDE_ID: [name], keys.X: empty,
            keys.Y: empty.clone(), keys.ERROR: error}


class StreamLoader(DataLoader):
    """A DataLoader that calls `on_start` once its worker processes exist: the preparer thread must start after
    the fork (a thread holding a lock at fork time, HDF5's or a logging lock, would deadlock the workers)."""

    def __init__(self, *args: Any, on_start: Callable[[], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_start = on_start

    def __iter__(self):  # noqa: ANN204
        iterator = super().__iter__()
        self.on_start()
        return iterator
