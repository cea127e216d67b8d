"""Slides -> per-slide tile features, on the slide engine `medconv infer` uses too (`medconv.slides`).

The tiling, the uint8 loader, DDP sharding (each slide on exactly one process), on-device normalisation and the
per-slide writer thread are shared; what differs is here: the module returns pooled features instead of class
probabilities, and `FeatureOutputs` writes `<slide>.h5` (and CLAM's `pt_files/<slide>.pt`), skipping slides whose
file is complete for the same encoder, tiling and dtype.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medconv.embedding.encoders import Encoder
from medconv.errors import ConfigError
from medconv.slides.data import SlideRunOptions, run_params
from medconv.slides.jobs import SlideJob
from medconv.slides.outputs import PreparedSlide, write_rows
from medconv.slides.predict import predict_slides
from medconv.slides.tile_module import TileModule
from medconv.tiling.feature_store import feature_paths, file_attrs, read_features, write_features, write_pt

PROG = "medconv embed"
DEFAULT_TILE_SIZE = 224
DEFAULT_TARGET_MPP = 0.5
DTYPES = ("float16", "float32")
SUMMARY_COLUMNS = ["slide", "status", "n_tiles", "feature_dim", "seconds", "tiles_per_s", "error", "process", "path"]
#: file attributes that must match for a slide to count as done
RUN_KEYS = ("encoder_fingerprint", "tile_size", "target_mpp", "image_size", "min_tissue", "dtype", "source_size",
            "source_mtime_ns")


@dataclass(kw_only=True)
class EmbedOptions(SlideRunOptions):
    """The tiling (shared with `medconv infer`) plus what the feature files record; see `embed_options`."""

    encoder_info: dict[str, Any]
    feature_dim: int
    dtype: str = "float16"
    clam_pt: bool = False


def embed_options(encoder: Encoder, out_dir: Path, *, tile_size: int | None = None, target_mpp: float | None = None,
                  image_size: tuple[int, int] | None = None, **kwargs: Any) -> EmbedOptions:
    """Options with the defaults `medconv embed` uses, and the encoder set to take `image_size`.

    Tile size and mpp: given, else the encoder's (a registry entry's, a medconv run's config, an SSL export's data),
    else 224 px at 0.5 um/px. Image size: given, else a registry entry's input size or a medconv classifier's training
    size, else the tile size.
    `kwargs`: the other `EmbedOptions` fields (coords_dir, min_tissue, batch_size, dtype, clam_pt, ...).
    """
    tile_size = int(tile_size or encoder.tile_size or DEFAULT_TILE_SIZE)
    target_mpp = float(target_mpp or encoder.target_mpp or DEFAULT_TARGET_MPP)
    if image_size is None:
        own = encoder.info.get("kind") in ("checkpoint", "registry") and encoder.img_size
        image_size = encoder.img_size if own else (tile_size, tile_size)
    encoder.set_img_size(tuple(image_size))
    if kwargs.get("dtype", "float16") not in DTYPES:
        raise ConfigError(f"--dtype {kwargs['dtype']!r}: choose one of {', '.join(DTYPES)}.")
    return EmbedOptions(out_dir=Path(out_dir), model=encoder.fingerprint(), target_mpp=target_mpp, tile_size=tile_size,
                        image_size=tuple(int(s) for s in image_size), mean=encoder.mean, std=encoder.std,
                        encoder_info=encoder.info, feature_dim=encoder.dim, **kwargs)


class TileEmbedder(TileModule):
    """uint8 tiles in, pooled features out (float32), normalised on the device with the encoder's mean/std."""

    key = "features"


class FeatureOutputs:
    """`medconv embed`'s `SlideOutputs`: `<slide>.h5` with features + coords, optionally CLAM's `.pt`."""

    key = "features"

    def __init__(self, options: EmbedOptions):
        self.options = options

    def run_params(self, job: SlideJob) -> dict[str, Any]:
        o = self.options
        run = run_params(job, o)
        run["encoder_fingerprint"] = run.pop("model")
        return {**run, "image_size": list(o.image_size), "min_tissue": o.min_tissue, "dtype": o.dtype}

    def skipped(self, job: SlideJob, run: dict[str, Any]) -> dict[str, Any] | None:
        paths = feature_paths(self.options.out_dir, job.name)
        attrs = file_attrs(paths["h5"])
        if attrs is None or any(_plain(attrs.get(k)) != _plain(run.get(k)) for k in RUN_KEYS):
            return None
        if self.options.clam_pt and not paths["pt"].is_file():  # asked for later: made from the finished h5
            write_pt(paths["pt"], read_features(paths["h5"]).features)
        return {"n_tiles": int(attrs.get("n_tiles", 0)), "feature_dim": int(attrs.get("feature_dim", 0))}

    def write(self, prepared: PreparedSlide, values: np.ndarray | None) -> dict[str, Any]:
        o, name = self.options, prepared.job.name
        if values is None:
            values = np.zeros((0, o.feature_dim), np.float32)
        if values.ndim != 2 or values.shape[1] != o.feature_dim:
            raise RuntimeError(f"the encoder gave features of shape {values.shape[1:]}, not ({o.feature_dim},)")
        paths = feature_paths(o.out_dir, name)
        _remove_stale_temps(paths.values())
        attrs = {"encoder": json.dumps(o.encoder_info, sort_keys=True), "feature_dim": o.feature_dim,
                 "n_tiles": len(values), "slide_id": name, **prepared.run}
        if o.clam_pt:  # before the h5: the h5 with `complete` marks the slide done
            write_pt(paths["pt"], values)
        write_features(paths["h5"], values, prepared.tiles.coords, prepared.store_attrs, attrs, o.dtype)
        return {"feature_dim": o.feature_dim}


def embed_slides(jobs: list[SlideJob], encoder: Encoder, options: EmbedOptions,
                 trainer_kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Embed every slide once across all processes; (all summary rows, is process 0).

    `trainer_kwargs`: accelerator, devices, strategy, num_nodes, precision for `lightning.Trainer`.
    """
    if encoder.in_chans != 3:
        raise ConfigError(f"the encoder takes {encoder.in_chans} input channels; slide tiles are RGB (3). Use an encoder "
                          "trained on RGB images.")
    check_forward(encoder, options.image_size)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    module = TileEmbedder(encoder.module, options.mean, options.std)
    return predict_slides(jobs, options, module, FeatureOutputs(options), trainer_kwargs, echo=PROG)


def check_forward(encoder: Encoder, image_size: tuple[int, int]) -> None:
    """One blank tile through the encoder: a size it cannot take or a feature size it misreports fails here,
    once, rather than on every slide."""
    try:
        with torch.no_grad():
            out = encoder.module(torch.zeros((1, encoder.in_chans, *image_size)))
    except Exception as err:
        raise ConfigError(f"encoder {encoder.info.get('name')} cannot take {image_size[0]}x{image_size[1]} tiles "
                          f"({type(err).__name__}: {err}); pass an --image-size it takes.") from err
    if tuple(out.shape) != (1, encoder.dim):
        raise ConfigError(f"encoder {encoder.info.get('name')} gives features of shape {tuple(out.shape[1:])}, not "
                          f"({encoder.dim},); medconv embeds pooled (B, D) outputs.")


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """summary.csv: slide, status, n_tiles, feature_dim, seconds, tiles_per_s, error, process, path."""
    return write_rows(path, rows, SUMMARY_COLUMNS)


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return str([_plain(v) for v in np.asarray(value).tolist()])
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _remove_stale_temps(paths: Any) -> None:
    """Temp files an interrupted run left for these outputs (see `medconv.io.atomic.temp_name`)."""
    for path in paths:
        if path.parent.is_dir():
            for tmp in path.parent.glob(glob.escape(f".{path.stem}.") + "*.tmp" + glob.escape(path.suffix)):
                tmp.unlink(missing_ok=True)
