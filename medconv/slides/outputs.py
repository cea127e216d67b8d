"""The writer protocol of the slide engine: what a pipeline writes per slide (`SlideOutputs`), the slide it is
handed (`PreparedSlide`), and the summary rows and CSV every slide command reports with.

`medconv infer` writes scores, heatmaps and GeoJSON (`medconv.inference.slide_scores.ScoreOutputs`); `medconv
embed` writes feature files (`medconv.embedding.run.FeatureOutputs`); tiling, loading, the predict loop and the
summary are the engine's.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medconv.io.atomic import write_text
from medconv.slides.jobs import SlideJob
from medconv.slides.stream import describe
from medconv.wsi.tile_dataset import SlideTiles


@dataclass
class PreparedSlide:
    job: SlideJob
    tiles: SlideTiles
    store_attrs: dict[str, Any]
    run: dict[str, Any]
    started: float = 0.0  # perf_counter when its preparation began
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


def failed_row(job: SlideJob, err: BaseException | str, start: float) -> dict[str, Any]:
    """The summary row of a slide that failed: status `failed` and why, so the other slides go on."""
    message = err if isinstance(err, str) else describe(err)
    return {"slide": job.name, "path": str(job.path), "status": "failed", "n_tiles": 0,
            "seconds": round(time.perf_counter() - start, 3), "error": message}


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """A CSV of `columns` (missing values empty, floats rounded), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return write_text(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return round(value, 6)
    return value
