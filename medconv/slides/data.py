"""Slides -> tiles for `Trainer.predict`: each process takes every world_size-th slide, tiles it with the
`medconv tile` mask and grid (or reads a given coords store), and reads its tiles in DataLoader workers
through `InferenceTiles` (a `TileDataset`: one slide reader per worker, uint8 tiles, no tile files).

What a slide's outputs are (scores and heatmaps for `medconv infer`, features for `medconv embed`) is a
`SlideOutputs` (outputs.py): it says whether a slide is already done and writes a finished slide; the rest is shared.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from medconv.errors import InputFileError
from medconv.slides.jobs import SlideJob
from medconv.slides.outputs import PreparedSlide, SlideOutputs, failed_row
from medconv.slides.stream import PENDING, SlideBoard, SlideStream, StreamLoader
from medconv.tiling.coords_store import read_coords
from medconv.tiling.slide_tiler import TileOptions, source_fingerprint, tile_slide
from medconv.wsi.tile_dataset import load_slide_tiles

COORDS_SUBDIR = "coords"  # where on-the-fly tiling keeps its coords stores, masks and QC images


@dataclass(kw_only=True)
class SlideRunOptions:
    """Everything a process needs to turn its slides into tiles (shared by scoring and embedding)."""

    out_dir: Path
    model: str  # fingerprint of what computes the tiles' outputs: a slide made by another is not done
    target_mpp: float
    tile_size: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    coords_dir: Path | None = None
    min_tissue: float = 0.25
    batch_size: int = 64
    num_workers: int = 2
    overwrite: bool = False
    backend: str = "auto"
    pin_memory: bool = False


def shard(jobs: list[SlideJob], rank: int, world_size: int) -> list[SlideJob]:
    """The slides process `rank` runs: every world_size-th, so each slide goes to exactly one process."""
    return jobs[rank::world_size]


def run_params(job: SlideJob, options: SlideRunOptions) -> dict[str, Any]:
    """What a finished slide's files record and must match to be kept: the model, the tiling and the source file."""
    size, mtime_ns = source_fingerprint(job.path)
    return {"model": options.model, "tile_size": options.tile_size, "target_mpp": options.target_mpp,
            "source_size": size, "source_mtime_ns": mtime_ns, "source_path": str(job.path.resolve())}


def prepare_slide(job: SlideJob, options: SlideRunOptions, outputs: SlideOutputs,
                  ) -> tuple[dict[str, Any] | None, PreparedSlide | None]:
    """(summary row, None) for a slide that is done, failed or has no tiles; (None, prepared) to run the model."""
    start = time.perf_counter()
    try:
        run = outputs.run_params(job)
        if not options.overwrite and (done := outputs.skipped(job, run)) is not None:
            return {"slide": job.name, "path": str(job.path), "status": "skipped", **done,
                    "seconds": round(time.perf_counter() - start, 3), "error": ""}, None
        coords_path = _coords(job, options)
        tiles = load_slide_tiles(job.path, coords_path, 0, slide_id=job.name, mpp=job.mpp)
        _, store_attrs = read_coords(coords_path)
        prepared = PreparedSlide(job, tiles, complete_attrs(job, store_attrs), run)
        if not len(tiles.coords):
            result = outputs.write(prepared, None)
            return {"slide": job.name, "path": str(job.path), "status": "ok", "n_tiles": 0, **result,
                    "seconds": round(time.perf_counter() - start, 3),
                    "error": "no tissue tiles at this tile size, mpp and --min-tissue"}, None
    except Exception as err:  # one bad slide never stops the others
        return failed_row(job, err, start), None
    prepared.started = start
    return None, prepared


def coords_path(job: SlideJob, options: SlideRunOptions) -> Path:
    """Where the slide's coords store is: in --coords-dir, else under out/coords (made by on-the-fly tiling)."""
    folder = options.coords_dir if options.coords_dir is not None else options.out_dir / COORDS_SUBDIR
    return folder / f"{job.name}.h5"


def _coords(job: SlideJob, options: SlideRunOptions) -> Path:
    """A `medconv tile` store: from --coords-dir, else made now (and reused by a rerun) under out/coords."""
    path = coords_path(job, options)
    if options.coords_dir is not None:
        if not path.exists():
            raise InputFileError(f"{path}: no coords store for slide {job.path}; run `medconv tile` with --out "
                                 f"{options.coords_dir}, or leave out --coords-dir to tile on the fly.")
        _, attrs = read_coords(path)
        for key, wanted in (("tile_size", options.tile_size), ("target_mpp", options.target_mpp)):
            if key in attrs and not np.isclose(float(attrs[key]), float(wanted)):
                raise InputFileError(f"{path}: tiled with {key} {attrs[key]}, but the model expects {wanted}; re-tile "
                                     f"with --{key.replace('_', '-')} {wanted} or pass the matching --{key.replace('_', '-')}.")
        return path
    tile_options = TileOptions(target_mpp=options.target_mpp, tile_size=options.tile_size, min_tissue=options.min_tissue,
                               slide_mpp=job.mpp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tile_slide(job.path, path.parent, job.name, tile_options)
    return path


def complete_attrs(job: SlideJob, attrs: dict[str, Any]) -> dict[str, Any]:
    """Stores from other tools (CLAM) lack the slide's size and mpp: read them from the slide."""
    if all(k in attrs for k in ("slide_width", "slide_height", "slide_mpp", "patch_size_level0")):
        return attrs
    from medconv.io.slide import open_slide

    with open_slide(job.path, mpp=job.mpp) as reader:
        if reader.mpp is None:
            raise InputFileError(f"{job.path}: no microns-per-pixel metadata; pass --slide-mpp (medconv never guesses).")
        width, height = reader.dimensions
        mpp = float(reader.mpp)
    size0 = attrs.get("patch_size_level0") or attrs["patch_size"] * float(np.ravel(attrs.get("downsample", [1]))[0])
    return {**attrs, "slide_width": int(width), "slide_height": int(height), "slide_mpp": mpp, "patch_size_level0": size0}


class SlideInferenceData(L.LightningDataModule):
    """This process's share of the slides as one `SlideStream`; a background thread prepares (tiles) them in
    order while the loader reads and the model scores those already prepared.

    `rows`: summary rows of slides that needed no model (skipped, failed before reading, no tiles);
    `prepared`: the slides handed to the stream, by name. Both fill while predict runs.
    """

    def __init__(self, jobs: list[SlideJob], options: SlideRunOptions, outputs: SlideOutputs):
        super().__init__()
        self.jobs = jobs
        self.options = options
        self.outputs = outputs
        self.rows: list[dict[str, Any]] = []
        self.prepared: dict[str, PreparedSlide] = {}
        self.mine: list[SlideJob] = []
        self.board: SlideBoard | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def setup(self, stage: str | None = None) -> None:
        if self.board is not None:
            return
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        self.mine = shard(self.jobs, rank, world)
        self.board = SlideBoard(len(self.mine))

    def predict_dataloader(self) -> DataLoader:
        o = self.options
        slides = [(job.name, job.path, coords_path(job, o), job.mpp) for job in self.mine]
        stream = SlideStream(slides, self.board, o.image_size, o.batch_size, backend=o.backend)
        return StreamLoader(stream, batch_size=None, num_workers=o.num_workers, pin_memory=o.pin_memory,
                            prefetch_factor=4 if o.num_workers > 0 else None, on_start=self.start)

    def start(self) -> None:
        """Begin preparing the slides (once; called when the loader's workers exist)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._prepare_all, name="slide-preparer", daemon=True)
            self._thread.start()

    def _prepare_all(self) -> None:
        board = self.board
        try:
            for k, job in enumerate(self.mine):
                if self._stop.is_set():
                    break
                row, prepared = prepare_slide(job, self.options, self.outputs)
                if prepared is None:
                    self.rows.append(row)
                    board.nothing(k)
                else:
                    self.prepared[job.name] = prepared  # before the board says so: its batches find it
                    board.ready(k, len(prepared.tiles.coords))
        finally:  # whatever stopped the thread, no loader waits for a slide that will never come
            for k in range(len(self.mine)):
                if board.status[k] == PENDING:
                    board.nothing(k)

    def wait(self) -> None:
        """Until every slide of this process is prepared or given up (the rows are complete)."""
        if self._thread is not None:
            self._thread.join()

    def teardown(self, stage: str | None = None) -> None:
        self._stop.set()  # an interrupted predict: tile no further slides
