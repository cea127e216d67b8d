"""Slides -> tiles for `Trainer.predict`: each process takes every world_size-th slide, tiles it with the
`medconv tile` mask and grid (or reads a given coords store), and reads its tiles in DataLoader workers
through `InferenceTiles` (a `TileDataset`: one slide reader per worker, uint8 tiles, no tile files).

What a slide's outputs are (scores and heatmaps for `medconv infer`, features for `medconv embed`) is a
`SlideOutputs`: it says whether a slide is already done and writes a finished slide; the rest is shared.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from medconv.errors import InputFileError, MedconvError
from medconv.inference.predictor import InferenceTiles, PaddingTile
from medconv.inference.slide_outputs import SlideSettings
from medconv.tiling.coords_store import read_coords
from medconv.tiling.slide_tiler import TileOptions, source_fingerprint, tile_slide
from medconv.wsi.tile_dataset import SlideTiles, load_slide_tiles

COORDS_SUBDIR = "coords"  # where on-the-fly tiling keeps its coords stores, masks and QC images


@dataclass(frozen=True)
class SlideJob:
    name: str
    path: Path
    mpp: float | None = None  # per-slide override (manifest `mpp` column or --slide-mpp)


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


@dataclass(kw_only=True)
class InferOptions(SlideRunOptions):
    """`medconv infer`: the tiling plus how scores become slide outputs."""

    settings: SlideSettings


@dataclass
class PreparedSlide:
    job: SlideJob
    tiles: SlideTiles
    store_attrs: dict[str, Any]
    run: dict[str, Any]
    prepare_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class SlideOutputs(Protocol):
    """What a pipeline writes per slide; tiling, loading, the predict loop and the summary are shared."""

    key: str  # the `predict_step` output holding the per-tile values (N, K)

    def run_params(self, job: SlideJob) -> dict[str, Any]:
        """The parameters a finished slide's outputs must match to be kept (stored in its files)."""

    def skipped(self, job: SlideJob, run: dict[str, Any]) -> dict[str, Any] | None:
        """Summary fields (n_tiles, ...) of a slide whose outputs are complete for `run`; None to run it."""

    def write(self, prepared: PreparedSlide, values: np.ndarray | None) -> dict[str, Any]:
        """Write the slide's outputs from its tiles' values in coords order (None: it has no tiles)."""


def shard(jobs: list[SlideJob], rank: int, world_size: int) -> list[SlideJob]:
    """The slides process `rank` runs: every world_size-th, so each slide goes to exactly one process."""
    return jobs[rank::world_size]


def run_params(job: SlideJob, options: SlideRunOptions) -> dict[str, Any]:
    size, mtime_ns = source_fingerprint(job.path)
    return {"model": options.model, "tile_size": options.tile_size, "target_mpp": options.target_mpp,
            "source_size": size, "source_mtime_ns": mtime_ns, "source_path": str(job.path.resolve())}


def failed_row(job: SlideJob, err: BaseException, start: float) -> dict[str, Any]:
    message = str(err) if isinstance(err, MedconvError) else f"{type(err).__name__}: {err}"
    if not isinstance(err, MedconvError) and err.__traceback__ is not None:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        message += f" (at {Path(frame.filename).name}:{frame.lineno})"
    return {"slide": job.name, "path": str(job.path), "status": "failed", "n_tiles": 0,
            "seconds": round(time.perf_counter() - start, 3), "error": message}


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
        prepared = PreparedSlide(job, tiles, _complete_attrs(job, store_attrs), run)
        if not len(tiles.coords):
            result = outputs.write(prepared, None)
            return {"slide": job.name, "path": str(job.path), "status": "ok", "n_tiles": 0, **result,
                    "seconds": round(time.perf_counter() - start, 3),
                    "error": "no tissue tiles at this tile size, mpp and --min-tissue"}, None
    except Exception as err:  # one bad slide never stops the others
        return failed_row(job, err, start), None
    prepared.prepare_s = time.perf_counter() - start
    return None, prepared


def _coords(job: SlideJob, options: SlideRunOptions) -> Path:
    """A `medconv tile` store: from --coords-dir, else made now (and reused by a rerun) under out/coords."""
    if options.coords_dir is not None:
        path = options.coords_dir / f"{job.name}.h5"
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
    coords_dir = options.out_dir / COORDS_SUBDIR
    coords_dir.mkdir(parents=True, exist_ok=True)
    tile_slide(job.path, coords_dir, job.name, tile_options)
    return coords_dir / f"{job.name}.h5"


def _complete_attrs(job: SlideJob, attrs: dict[str, Any]) -> dict[str, Any]:
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
    """Prepares this process's share of the slides in `setup` and serves their tiles in slide order."""

    def __init__(self, jobs: list[SlideJob], options: SlideRunOptions, outputs: SlideOutputs):
        super().__init__()
        self.jobs = jobs
        self.options = options
        self.outputs = outputs
        self.rows: list[dict[str, Any]] = []
        self.prepared: list[PreparedSlide] = []
        self.dataset: InferenceTiles | PaddingTile | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        from tqdm import tqdm

        mine = shard(self.jobs, rank, world)
        for job in tqdm(mine, desc=f"preparing slides (process {rank})", unit="slide", disable=None, leave=False):
            row, prepared = prepare_slide(job, self.options, self.outputs)
            if row is not None:
                self.rows.append(row)
            if prepared is not None:
                self.prepared.append(prepared)
        o = self.options
        self.dataset = InferenceTiles([p.tiles for p in self.prepared], None, o.image_size, backend=o.backend)
        if len(self.dataset) == 0:
            self.dataset = PaddingTile(o.image_size)

    def predict_dataloader(self) -> DataLoader:
        o = self.options
        return DataLoader(self.dataset, batch_size=o.batch_size, shuffle=False, num_workers=o.num_workers,
                          pin_memory=o.pin_memory, persistent_workers=False,
                          prefetch_factor=4 if o.num_workers > 0 else None)
