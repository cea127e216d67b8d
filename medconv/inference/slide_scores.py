"""`medconv infer` with a tile classifier, on the slide engine (`medconv.slides`): `TilePredictor` gives each tile's
class probabilities, `ScoreOutputs` writes each slide's h5 / PNG / GeoJSON (slide_outputs.py), and summary.csv
has one row per slide with its score and predicted class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medconv.inference.heatmap import aggregate_scores
from medconv.inference.slide_outputs import (
    SlideSettings,
    finished,
    output_paths,
    predicted_class,
    read_scores,
    thumbnail_for,
    write_slide_outputs,
)
from medconv.slides.data import SlideRunOptions, run_params
from medconv.slides.jobs import SlideJob
from medconv.slides.outputs import PreparedSlide, write_rows
from medconv.slides.predict import predict_slides
from medconv.slides.tile_module import TileModule

SUMMARY_COLUMNS = ("slide", "status", "score", "predicted_class", "n_tiles", "seconds", "tiles_per_s", "n_regions", "error",
                   "process")


@dataclass(kw_only=True)
class InferOptions(SlideRunOptions):
    """`medconv infer`: the tiling plus how scores become slide outputs."""

    settings: SlideSettings


class TilePredictor(TileModule):
    """A trained classifier over uint8 tiles: class probabilities (softmax in fp32)."""

    key = "probs"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images).softmax(1)


class ScoreOutputs:
    """`medconv infer`'s `SlideOutputs`: tile probabilities -> h5 (coords, scores, heatmap), PNG, GeoJSON."""

    key = "probs"

    def __init__(self, options: InferOptions):
        self.options = options

    def run_params(self, job: SlideJob) -> dict[str, Any]:
        return run_params(job, self.options)

    def skipped(self, job: SlideJob, run: dict[str, Any]) -> dict[str, Any] | None:
        """A finished slide: scores re-aggregated as asked; the PNG and GeoJSON redrawn if the threshold or class changed."""
        o = self.options
        if (file_attrs := finished(o.out_dir, job.name, run)) is None:
            return None
        settings = o.settings
        coords, scores, store_attrs, _ = read_scores(output_paths(o.out_dir, job.name)["h5"])
        changed = (not np.isclose(float(file_attrs.get("threshold", -1)), settings.threshold)
                   or file_attrs.get("positive_class") != settings.classes[settings.positive])
        if changed:
            result = write_slide_outputs(o.out_dir, job.name, coords, scores, store_attrs, settings,
                                         {k: file_attrs.get(k) for k in ("model", "tile_size", "target_mpp", "source_size",
                                                                         "source_mtime_ns", "source_path")}, None)
        else:
            slide_scores = aggregate_scores(scores.reshape(len(coords), -1), settings.aggregate)
            result = {"score": float(slide_scores[settings.positive]), "predicted_class": predicted_class(slide_scores, settings),
                      **{f"score_{c}": float(v) for c, v in zip(settings.classes, slide_scores, strict=True)}}
        return {"n_tiles": len(coords), **result}

    def write(self, prepared: PreparedSlide, values: np.ndarray | None) -> dict[str, Any]:
        o, name = self.options, prepared.job.name
        if values is None:  # no tiles: empty outputs on a blank background
            values, thumbnail = np.zeros((0, len(o.settings.classes))), None
        else:
            from medconv.io.slide import open_slide

            reader = open_slide(prepared.job.path, mpp=prepared.job.mpp, backend=o.backend)
            try:
                thumbnail = thumbnail_for(reader)
            finally:
                reader.close()
        return write_slide_outputs(o.out_dir, name, prepared.tiles.coords, values, prepared.store_attrs, o.settings,
                                   prepared.run, thumbnail)


def run_slides(jobs: list[SlideJob], options: InferOptions, classifier: torch.nn.Module,
               trainer_kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Predict every slide once across all processes; (all summary rows, is process 0)."""
    module = TilePredictor(classifier, options.mean, options.std)
    return predict_slides(jobs, options, module, ScoreOutputs(options), trainer_kwargs)


def write_summary(path: Path, rows: list[dict[str, Any]], classes: list[str]) -> Path:
    """summary.csv: one row per slide, with status and error, written atomically."""
    return write_rows(path, rows, [*SUMMARY_COLUMNS, *(f"score_{c}" for c in classes), "path"])
