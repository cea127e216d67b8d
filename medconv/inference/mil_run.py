"""`medconv infer` with a MIL checkpoint: each slide's whole feature bag through the model (one bag at a time, no
subsampling, bf16 autocast on a GPU), written by the same writers as tile classifiers' outputs.

The slide score is the model's probability, not an aggregate of tile scores. The per-tile map (heatmap, PNG,
GeoJSON, `scores[:, positive]`) is the attention relative to the slide's largest, a / max(a) in [0, 1]: softmax
attention sums to 1 over the bag, so its raw scale shrinks with the number of tiles and a fixed colour scale or
threshold would mean different things on a small and a large slide; relative to the maximum, 1 is always "where
the model looked most". The raw attention is kept as the h5 dataset `attention`, and CLAM's per-tile instance
probabilities as `instance_scores` (N, C). Other classes' columns of `scores` are 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medconv.errors import ConfigError
from medconv.inference.heatmap import Aggregation
from medconv.inference.mil_features import embed_now, locate_features
from medconv.inference.slide_outputs import SlideSettings, finished, thumbnail_for, write_slide_outputs
from medconv.runs import Run
from medconv.slides.data import complete_attrs
from medconv.slides.jobs import SlideJob
from medconv.slides.outputs import failed_row
from medconv.tiling.coords_store import read_coords
from medconv.tiling.feature_store import read_features
from medconv.tiling.slide_tiler import source_fingerprint

MAP_LABEL = "attention / max attention"
MAP_MEASURE = "attention_rel"  # its GeoJSON measurement (tiles) and the regions' max_/mean_ prefix


def run_mil(loaded: Run, args: argparse.Namespace, positive: int, trainer_kwargs: dict[str, Any],
            ) -> list[dict[str, Any]]:
    """Summary rows of every slide: skipped when done, else features found or embedded, then the model run."""
    from medconv.slides.jobs import slide_jobs

    if trainer_kwargs["devices"] not in (1, "1", [0]) or trainer_kwargs["num_nodes"] != 1:
        raise ConfigError("MIL inference runs in one process; embed on several devices with `medconv embed ... --devices N` "
                          "first, then pass that folder as --features-dir.")
    jobs, not_slides = slide_jobs(args.inputs, exclude=[args.out], slide_mpp=args.slide_mpp)
    if args.features_dir is None and loaded.feature_encoder is None:
        raise ConfigError(f"{loaded.checkpoint}: the model was trained on features without a `medconv embed` encoder "
                          "record (CLAM/TRIDENT files?), so medconv cannot embed new slides the same way; pass "
                          "--features-dir with the slides' <slide>.h5 features from the same extractor.")
    settings = SlideSettings(tuple(loaded.classes), positive, Aggregation(), args.threshold)
    rows, todo = [], []
    for job in jobs:
        start = time.perf_counter()
        try:
            run = mil_run_params(job, loaded)
            if not args.overwrite and (done := skipped(args.out, job, run, settings)) is not None:
                rows.append({"slide": job.name, "path": str(job.path), "status": "skipped", **done,
                             "seconds": round(time.perf_counter() - start, 3), "error": ""})
            else:
                todo.append((job, run))
        except Exception as err:
            rows.append(failed_row(job, err, start))
    found, to_embed, errors = locate_features([j for j, _ in todo], loaded, args.features_dir)
    embed_seconds: dict[str, float] = {}
    if to_embed:
        embedded, embed_errors, embed_seconds = embed_now(to_embed, loaded, args, trainer_kwargs, list(found.values()))
        found, errors = {**found, **embedded}, {**errors, **embed_errors}
    device = torch.device("cuda" if trainer_kwargs["accelerator"] in ("gpu", "cuda") else trainer_kwargs["accelerator"])
    amp = device.type == "cuda" and not str(trainer_kwargs["precision"]).startswith(("32", "64"))
    loaded.module.to(device)
    for job, run in todo:
        start = time.perf_counter() - embed_seconds.get(job.name, 0.0)
        if job.name in errors:
            rows.append({**failed_row(job, RuntimeError(), start), "error": errors[job.name]})
            continue
        try:
            rows.append(infer_slide(job, found[job.name], loaded, settings, run, args, device, amp, start))
        except Exception as err:  # one bad slide never stops the others
            rows.append(failed_row(job, err, start))
    rows += [{"slide": p.name, "path": str(p), "status": "skipped", "n_tiles": 0, "error": why} for p, why in not_slides]
    return sorted(rows, key=lambda r: r["slide"])


def mil_run_params(job: SlideJob, loaded: Run) -> dict[str, Any]:
    """What a finished slide's outputs must match: the checkpoint and the slide file."""
    size, mtime_ns = source_fingerprint(job.path)
    return {"model": loaded.fingerprint(), "source_size": size, "source_mtime_ns": mtime_ns,
            "source_path": str(job.path.resolve())}


def skipped(out_dir: Path, job: SlideJob, run: dict[str, Any], settings: SlideSettings) -> dict[str, Any] | None:
    """Summary fields of a slide done with this checkpoint, threshold and class; None to (re)do it."""
    attrs = finished(out_dir, job.name, run)
    if attrs is None or attrs.get("aggregate") != "model" or attrs.get("positive_class") != settings.classes[settings.positive] \
            or not np.isclose(float(attrs.get("threshold", -1)), settings.threshold):
        return None
    from medconv.inference.slide_outputs import predicted_class

    slide_scores = np.asarray(attrs["slide_scores"], np.float64).reshape(-1)
    return {"n_tiles": int(attrs.get("n_tiles", 0)), "score": float(attrs["score"]), "n_regions": int(attrs.get("n_regions", 0)),
            "predicted_class": predicted_class(slide_scores, settings),
            **{f"score_{c}": float(v) for c, v in zip(settings.classes, slide_scores, strict=True)}}


def predict_bag(module: torch.nn.Module, features: np.ndarray, device: torch.device, amp: bool,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(class probabilities (C,), attention (N,), instance logits (N, C) or None) of one whole bag."""
    bag = torch.from_numpy(np.ascontiguousarray(features, np.float32))[None].to(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = module(bag)
    instance = None if out.instance_logits is None else out.instance_logits[0].float().cpu().numpy()
    return out.logits[0].float().softmax(-1).cpu().numpy(), out.attention[0].float().cpu().numpy(), instance


def relative_attention(attention: np.ndarray) -> np.ndarray:
    """a / max(a) in [0, 1] (see the module docstring for why); zeros when all attention is 0."""
    top = float(attention.max()) if len(attention) else 0.0
    return attention / top if top > 0 else np.zeros_like(attention)


def infer_slide(job: SlideJob, features_path: Path, loaded: Run, settings: SlideSettings, run: dict[str, Any],
                args: argparse.Namespace, device: torch.device, amp: bool, start: float) -> dict[str, Any]:
    """Run the model on the slide's bag and write h5 / PNG / GeoJSON; the summary row."""
    from medconv.io.slide import open_slide

    bag = read_features(features_path)
    if bag.coords is None:
        raise ConfigError(f"{features_path}: features without coords; heatmaps need each tile's position.")
    _, store_attrs = read_coords(features_path)
    store_attrs = complete_attrs(job, store_attrs)
    n, classes = len(bag.features), settings.classes
    scores = np.zeros((n, len(classes)), np.float32)
    extra: dict[str, np.ndarray] = {}
    measurements: dict[str, np.ndarray] = {}
    if n:
        probs, attention, instance_logits = predict_bag(loaded.module, bag.features, device, amp)
        relative = relative_attention(attention)
        scores[:, settings.positive] = relative
        extra["attention"] = attention
        measurements = {MAP_MEASURE: relative, "attention": attention}
        if instance_logits is not None:
            extra["instance_scores"] = 1 / (1 + np.exp(-instance_logits))  # classifier c: P(tile is evidence of c)
            measurements |= {f"instance_prob_{c}": extra["instance_scores"][:, i] for i, c in enumerate(classes)}
        reader = open_slide(job.path, mpp=job.mpp, backend=args.backend)
        try:
            thumbnail = thumbnail_for(reader)
        finally:
            reader.close()
    else:
        probs, thumbnail = np.full(len(classes), np.nan), None
    attrs = {**run, "tile_size": bag.attrs.get("tile_size"), "target_mpp": bag.attrs.get("target_mpp"),
             "features_path": str(features_path.resolve()), "n_tiles": n,
             "feature_encoder": bag.attrs.get("encoder")}
    result = write_slide_outputs(args.out, job.name, bag.coords, scores, store_attrs, settings, attrs, thumbnail,
                                 slide_scores=probs, extra=extra, map_label=MAP_LABEL, measurements=measurements or None,
                                 map_measure=MAP_MEASURE)
    seconds = time.perf_counter() - start
    print(f"medconv infer: {job.name}: {n} tiles, P({classes[settings.positive]}) {result['score']:.3f} in {seconds:.1f} s",
          file=sys.stderr)
    return {"slide": job.name, "path": str(job.path), "status": "ok", "n_tiles": n, **result, "seconds": round(seconds, 3),
            "tiles_per_s": round(n / max(seconds, 1e-9), 1),
            "error": "" if n else "no tissue tiles at this tile size, mpp and --min-tissue"}
