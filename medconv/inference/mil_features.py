"""Feature bags for MIL inference: a slide's `<features-dir>/<slide>.h5` when given and made by the encoder the
model was trained on, else embedded now with that encoder (the checkpoint's `feature_encoder` record) into
`<out>/features/` through `medconv embed`'s pipeline, so a rerun reuses them.

The encoder record says the encoder, not the tiling of the training bags (a timm encoder has no tile size of its
own), so the tile size, mpp, tissue threshold and dtype are read from a feature file of the same encoder: one in
--features-dir, else one of the run's training bags; `--tile-size` / `--target-mpp` override them.

The slides are embedded by `medconv.embedding.run.embed_slides`, the same writer `medconv embed` runs on the slide
engine, so the files are exactly those `medconv embed` would write. The dependency is one way: `inference`
imports `embedding`, never the reverse; both stand on `medconv.slides`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import h5py
import pandas as pd

from medconv.errors import ConfigError, InputFileError
from medconv.runs import Run
from medconv.slides.jobs import SlideJob
from medconv.tiling.coords_store import plain_attr
from medconv.tiling.feature_store import FORMAT as FEATURES_FORMAT
from medconv.tiling.feature_store import encoder_fingerprint
from medconv.tiling.slide_tiler import source_fingerprint

FEATURES_SUBDIR = "features"
#: feature-file attributes that the slides embedded now take from the training bags
TILING_KEYS = ("tile_size", "target_mpp", "min_tissue", "dtype")


def feature_attrs(path: Path) -> tuple[dict[str, Any], tuple[int, ...]]:
    """A feature file's attributes (file over `coords`) and its features' shape, without reading the features."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise InputFileError(f"{path}: no `features` dataset (datasets: {sorted(f)}); not a feature file. Run "
                                     "`medconv embed` into the --features-dir folder.")
            attrs = {k: plain_attr(v) for k, v in f["coords"].attrs.items()} if "coords" in f else {}
            attrs.update({k: plain_attr(v) for k, v in f.attrs.items()})
            return attrs, tuple(f["features"].shape)
    except OSError as err:
        raise InputFileError(f"{path}: unreadable HDF5 ({err}); delete it and re-run `medconv embed`.") from err


def check_features(path: Path, job: SlideJob, loaded: Run) -> dict[str, Any]:
    """The file's attributes when it holds this slide's features from the model's encoder; else a clear error."""
    attrs, shape = feature_attrs(path)
    if attrs.get("format") == FEATURES_FORMAT and not attrs.get("complete"):
        raise InputFileError(f"{path}: written only in part; delete it and re-run `medconv embed`.")
    if len(shape) != 2 or shape[1] != loaded.in_dim:
        raise InputFileError(f"{path}: features of shape {shape}, but {loaded.checkpoint.name} takes {loaded.in_dim} "
                             "features per tile; pass the features folder of the encoder the model was trained on.")
    wanted = loaded.feature_encoder
    if wanted is not None:
        record = _record(attrs)
        if record is None:
            raise InputFileError(f"{path}: has no `encoder` record (not made by `medconv embed`), so it cannot be checked "
                                 f"against the encoder {wanted.get('name')!r} the model was trained on; remove it from "
                                 "--features-dir (or leave out --features-dir) to embed the slide now.")
        if encoder_fingerprint(record) != encoder_fingerprint(wanted):
            raise InputFileError(
                f"{path}: made with encoder {record.get('name')!r} (fingerprint {encoder_fingerprint(record)}), but "
                f"{loaded.checkpoint.name} was trained on features of {wanted.get('name')!r} (fingerprint "
                f"{encoder_fingerprint(wanted)}); pass the features folder `medconv embed` made with that encoder, or leave "
                "out --features-dir to embed the slide now.")
    if attrs.get("source_size") is not None and int(attrs["source_size"]) != source_fingerprint(job.path)[0]:
        raise InputFileError(f"{path}: made from a slide file of {attrs['source_size']} bytes, not {job.path} "
                             f"({source_fingerprint(job.path)[0]} bytes); two slides share the name {job.name!r}?")
    return attrs


def locate_features(jobs: list[SlideJob], loaded: Run, features_dir: Path | None,
                    ) -> tuple[dict[str, Path], list[SlideJob], dict[str, str]]:
    """(slide -> checked feature file from --features-dir, slides to embed now, slide -> error)."""
    found: dict[str, Path] = {}
    to_embed: list[SlideJob] = []
    errors: dict[str, str] = {}
    for job in jobs:
        path = features_dir / f"{job.name}.h5" if features_dir is not None else None
        if path is not None and path.is_file():
            try:
                check_features(path, job, loaded)
                found[job.name] = path
            except InputFileError as err:
                errors[job.name] = str(err)
        elif loaded.feature_encoder is not None:
            to_embed.append(job)
        else:
            errors[job.name] = (f"no {path}; {loaded.checkpoint.name} does not record the encoder its training features "
                                "came from (made by another tool, e.g. CLAM), so medconv cannot embed the slide: put its "
                                "features, from the same extractor, in --features-dir.")
    return found, to_embed, errors


def training_tiling(loaded: Run, candidates: list[Path]) -> tuple[dict[str, Any], str]:
    """Tile size, mpp, tissue threshold and dtype of a feature file by the model's encoder: the first of
    `candidates` (--features-dir files), else one of the run's training bags; ({}, "") when none is found."""
    if loaded.feature_tiling.get("tile_size") and loaded.feature_tiling.get("target_mpp"):  # recorded at fit
        return {k: v for k, v in loaded.feature_tiling.items() if k in TILING_KEYS and v is not None}, "the checkpoint"
    wanted = encoder_fingerprint(loaded.feature_encoder or {})
    for path in [*candidates, *_training_files(loaded)]:
        try:
            attrs, _ = feature_attrs(path)
        except InputFileError:
            continue
        record = _record(attrs)
        if record is not None and encoder_fingerprint(record) == wanted and attrs.get("tile_size") and attrs.get("target_mpp"):
            return {k: attrs[k] for k in TILING_KEYS if attrs.get(k) is not None}, str(path)
    return {}, ""


def embed_now(jobs: list[SlideJob], loaded: Run, args: argparse.Namespace, trainer_kwargs: dict[str, Any],
              found: list[Path]) -> tuple[dict[str, Path], dict[str, str], dict[str, float]]:
    """Embed `jobs` into <out>/features with the model's encoder; (slide -> file, slide -> error, slide -> seconds)."""
    from medconv.embedding.encoders import encoder_from_info
    from medconv.embedding.run import embed_options, embed_slides

    record = dict(loaded.feature_encoder or {})
    tiling, source = training_tiling(loaded, found)
    tile_size = args.tile_size or tiling.get("tile_size") or record.get("tile_size")
    target_mpp = args.target_mpp or tiling.get("target_mpp") or record.get("target_mpp")
    if not tile_size or not target_mpp:
        raise ConfigError(f"{loaded.checkpoint.name}: cannot tell the tile size and mpp its training features were made at "
                          "(no feature file of its encoder in --features-dir or among the run's training bags); pass "
                          "--tile-size and --target-mpp as given to `medconv embed` (the h5 attributes tile_size and "
                          "target_mpp of a training feature file).")
    min_tissue = args.min_tissue if args.min_tissue is not None else float(tiling.get("min_tissue") or 0.25)
    print(f"medconv infer: embedding {len(jobs)} slides with {record.get('name')} at {int(tile_size)} px, "
          f"{float(target_mpp):g} um/px (from {source or 'the encoder record / --tile-size, --target-mpp'})")
    encoder = encoder_from_info(record)
    image_size = tuple(int(s) for s in record["img_size"]) if record.get("img_size") else None
    options = embed_options(
        encoder, args.out / FEATURES_SUBDIR, tile_size=int(tile_size), target_mpp=float(target_mpp), image_size=image_size,
        coords_dir=args.coords_dir, min_tissue=min_tissue, batch_size=args.batch_size, num_workers=args.num_workers,
        backend=args.backend, pin_memory=trainer_kwargs["accelerator"] not in ("cpu",), dtype=str(tiling.get("dtype") or "float16"),
    )
    rows, _ = embed_slides(jobs, encoder, options, trainer_kwargs)
    paths, errors, seconds = {}, {}, {}
    for row in rows:
        if row["status"] == "failed":
            errors[row["slide"]] = f"embedding: {row['error']}"
        else:
            paths[row["slide"]] = options.out_dir / f"{row['slide']}.h5"
            seconds[row["slide"]] = float(row.get("seconds") or 0.0)
    return paths, errors, seconds


def _record(attrs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return json.loads(attrs["encoder"]) if isinstance(attrs.get("encoder"), str) else None
    except ValueError:
        return None


def _training_files(loaded: Run, limit: int = 3) -> list[Path]:
    """A few of the run's training bags, found as `MILDataModule` finds them (features_path, or the features folder
    of the row or of the config, by slide id or slide file stem); relative paths tried from the working directory
    and the folders above the run."""
    data = loaded.data_args
    bases = [Path.cwd(), *loaded.checkpoint.resolve().parents]
    manifest = next((b / data["manifest"] for b in bases if data.get("manifest") and (b / data["manifest"]).is_file()), None)
    if manifest is None:
        return []
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False).head(limit)
    except (OSError, ValueError):
        return []
    files = []
    for row in table.to_dict("records"):
        name = row.get("slide_id") or (Path(row["slide_path"]).stem if row.get("slide_path") else "")
        if row.get("features_path"):
            files.append(manifest.parent / row["features_path"])
        elif row.get("features_dir") and name:
            files.append(manifest.parent / row["features_dir"] / f"{name}.h5")
        elif data.get("features_dir") and name:
            files += [b / data["features_dir"] / f"{name}.h5" for b in bases]
    return [f for f in files if f.is_file()]
