"""Run slides through `Trainer.predict` and write each slide's outputs as soon as its tiles are done.

`SlideWriter` (a `BasePredictionWriter`) collects the per-tile values batch by batch (batches may straddle
slides) and, when a slide's last tile arrives, hands them to the pipeline's `SlideOutputs` on the process that
owns the slide, in a background thread, so the model goes on with the next slide meanwhile. After predict, the
processes exchange their summary rows, so process 0 can write summary.csv. `medconv infer` writes scores
(`medconv.inference.slide_scores.ScoreOutputs`: h5 / PNG / GeoJSON); `medconv embed` writes features through
the same loop.
"""

from __future__ import annotations

import sys
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm import tqdm

from medconv import keys
from medconv.slides.data import SlideInferenceData, SlideRunOptions
from medconv.slides.jobs import SlideJob
from medconv.slides.outputs import PreparedSlide, SlideOutputs, failed_row
from medconv.slides.tile_module import PADDING_ID


class SlideWriter(BasePredictionWriter):
    """Per slide: gather the tiles' values in order, then have `outputs` write them (one row per slide).

    `echo`: a prefix to print each finished slide's tile count and throughput with (None: quiet).
    """

    def __init__(self, options: SlideRunOptions, outputs: SlideOutputs, echo: str | None = None):
        super().__init__(write_interval="batch")
        self.options = options
        self.outputs = outputs
        self.echo = echo
        self.rows: list[dict[str, Any]] = []
        self._slides: dict[str, PreparedSlide] = {}
        self._parts: dict[str, list[np.ndarray]] = {}
        self._xy: dict[str, list[np.ndarray]] = {}
        self._started: dict[str, float] = {}
        self._mark = 0.0
        self._bar: tqdm | None = None
        self._slide_bar: tqdm | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slide-writer")
        self._pending: list[Future] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        self._slides = dm.prepared  # filled by the preparer while predict runs
        self._failed: set[str] = set()
        self._n_jobs = len(dm.mine)
        rank = trainer.global_rank
        self._mark = time.perf_counter()  # the predict loop's time is split between slides as each one completes
        self._bar = tqdm(total=0, desc=f"tiles (process {rank})", unit="tile", position=2 * rank, disable=None)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:  # noqa: ANN001
        slide_ids = list(prediction[keys.SLIDE_ID])
        if keys.ERROR in prediction:  # the loader could not read this slide's tiles: it fails, the others go on
            self._fail(slide_ids[0], prediction[keys.ERROR])
            return
        probs = prediction[self.outputs.key].float().numpy()
        xs, ys = (torch.as_tensor(prediction[k]).numpy() for k in (keys.X, keys.Y))
        start = 0
        while start < len(slide_ids):  # consecutive runs of one slide (the loader goes slide by slide)
            name = slide_ids[start]
            end = start
            while end < len(slide_ids) and slide_ids[end] == name:
                end += 1
            if name != PADDING_ID and name not in self._failed:
                self._add(name, probs[start:end], np.stack([xs[start:end], ys[start:end]], axis=1), trainer.global_rank)
            start = end
        if self._bar is not None:
            self._bar.update(len(slide_ids))

    def _fail(self, name: str, error: str) -> None:
        if name in self._failed:
            return
        self._failed.add(name)
        self._parts.pop(name, None)
        self._xy.pop(name, None)
        prepared = self._slides[name]
        self.rows.append(failed_row(prepared.job, f"reading its tiles: {error}", max(self._mark, prepared.started)))
        self._mark = time.perf_counter()

    def _add(self, name: str, probs: np.ndarray, xy: np.ndarray, rank: int) -> None:
        if name not in self._started:
            self._started[name] = time.perf_counter()
            n = len(self._slides[name].tiles.coords)
            if self._bar is not None:  # the total grows as slides are tiled
                self._bar.total = sum(len(p.tiles.coords) for p in list(self._slides.values()))
                self._bar.set_postfix_str(f"slide {len(self._started)}/{self._n_jobs}", refresh=True)
            if self._slide_bar is not None:
                self._slide_bar.close()
            self._slide_bar = tqdm(total=n, desc=name, unit="tile", position=2 * rank + 1, leave=False, disable=None)
        self._parts.setdefault(name, []).append(probs)
        self._xy.setdefault(name, []).append(xy)
        if self._slide_bar is not None:
            self._slide_bar.update(len(probs))
        if sum(len(p) for p in self._parts[name]) == len(self._slides[name].tiles.coords):
            scores, xy = np.concatenate(self._parts.pop(name)), np.concatenate(self._xy.pop(name))
            # the slide's time: from when it was prepared or the previous slide completed, whichever was later
            # (tiling done while the model ran the previous slide is not its cost), to its outputs written
            start = max(self._mark, self._slides[name].started)
            self._mark = time.perf_counter()
            self._pending.append(self._pool.submit(self._finish, name, scores, xy, start))

    def _finish(self, name: str, values: np.ndarray, xy: np.ndarray, start: float) -> None:
        prepared = self._slides[name]
        try:
            if not np.array_equal(xy, prepared.tiles.coords):
                raise RuntimeError("tiles came back out of order; the DataLoader must not shuffle")
            result = self.outputs.write(prepared, values)
        except Exception as err:
            self.rows.append(failed_row(prepared.job, err, start))
            return
        n = len(values)
        seconds = time.perf_counter() - start
        tiles_per_s = round(n / max(seconds, 1e-9), 1)
        self.rows.append({"slide": name, "path": str(prepared.job.path), "status": "ok", "n_tiles": n, **result,
                          "seconds": round(seconds, 3), "tiles_per_s": tiles_per_s, "error": ""})
        if self.echo:
            print(f"{self.echo}: {name}: {n} tiles in {seconds:.1f} s, {tiles_per_s:g} tiles/s", file=sys.stderr)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wait()
        for bar in (self._slide_bar, self._bar):
            if bar is not None:
                bar.close()

    def wait(self) -> None:
        """Block until every slide handed to the writer thread is written (its row appended)."""
        for future in self._pending:
            future.result()
        self._pending.clear()


def predict_slides(jobs: list[SlideJob], options: SlideRunOptions, module: L.LightningModule, outputs: SlideOutputs,
                   trainer_kwargs: dict[str, Any], echo: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Run `module` over every slide's tiles once across all processes and have `outputs` write each slide;
    (all summary rows, is process 0). `module.predict_step` returns `outputs.key`, slide_id, x, y per tile."""
    data = SlideInferenceData(jobs, options, outputs)
    writer = SlideWriter(options, outputs, echo)
    trainer = L.Trainer(callbacks=[writer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(options.out_dir),
                        **trainer_kwargs)
    try:
        with warnings.catch_warnings():  # the stream is one ordered iterable: the writer needs no sampler indices
            warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
            trainer.predict(module, datamodule=data, return_predictions=False)
    finally:
        data.teardown()
    data.wait()
    writer.wait()
    done = {r["slide"] for r in data.rows + writer.rows}
    # a slide without a row (its tiles did not all arrive, or preparation stopped): reported, not lost
    lost = [failed_row(job, RuntimeError("not every tile was scored" if job.name in data.prepared else "never prepared"),
                       time.perf_counter()) for job in data.mine if job.name not in done]
    for row in data.rows + writer.rows + lost:
        row["process"] = trainer.global_rank  # which process ran the slide (DDP: each slide exactly once)
    rows = gather_rows(data.rows + writer.rows + lost)
    return sorted(rows, key=lambda r: r["slide"]), trainer.global_rank == 0


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's rows, on every process (DDP); the rows themselves otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts: list[list[dict[str, Any]]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]
