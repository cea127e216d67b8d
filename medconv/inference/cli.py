"""`medconv infer CKPT INPUT... --out DIR`: slide heatmaps, tile scores, QuPath GeoJSON and slide scores, or
mammogram predictions with saliency overlays, depending on what the checkpoint was trained on. A MIL checkpoint
(`MILModule` on feature bags) gives slide probabilities and attention heatmaps, from --features-dir or from
features embedded now with the encoder it was trained on (docs/inference.md, "MIL checkpoints").

CKPT is a .ckpt file or a run directory (its best checkpoint); the run's config.yaml says the model, tile size,
target mpp and classes. INPUT: slide files, folders, globs, or a manifest CSV (`slide_path` [, slide_id, mpp];
mammograms: `image_path` [, patient_id, exam_id, laterality, view]). A rerun skips finished slides.
Exit code: 0 all ok or skipped, 1 some input failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medconv.errors import ConfigError
from medconv.slides.run_args import add_run_arguments, trainer_kwargs

PROG = "medconv infer"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint file or run directory (runs/<name>/version_N)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="slides/mammograms: files, folders, globs or a manifest .csv")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--target-mpp", type=float, default=None, help="tile resolution, um/px (default: the model's)")
    p.add_argument("--tile-size", type=int, default=None, help="tile side in px at the target mpp (default: the model's)")
    p.add_argument("--coords-dir", type=Path, default=None, help="reuse `medconv tile` stores (<slide>.h5) instead of tiling")
    p.add_argument("--min-tissue", type=float, default=None, help="tissue fraction a tile needs when tiling on the fly "
                   "(default 0.25; MIL: that of the training features)")
    p.add_argument("--features-dir", type=Path, default=None, help="MIL checkpoints: `medconv embed` features "
                   "(<slide>.h5) to use where present; other slides are embedded now into <out>/features")
    add_run_arguments(p)
    p.add_argument("--aggregate", default="max", help="slide score from tile probabilities: mean, max, topk or topk:K")
    p.add_argument("--threshold", type=float, default=0.5, help="probability for regions (GeoJSON annotations) and the "
                   "predicted class of two-class models")
    p.add_argument("--class", dest="class_name", default=None, help="class the heatmap and score are about (default: the last)")
    p.add_argument("--masks", default=None, help="tumour masks to evaluate the heatmaps against: a folder of "
                   "<slide>[_tumor].png or a CSV with slide_id|slide_path, mask_path[, mask_downsample]")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs are complete")
    p.add_argument("--backend", default="auto", help="slide reader: auto, openslide, tiff, plain")
    return p


def main(argv: list[str] | None = None) -> int:
    from medconv.commands import run_tool

    return run_tool(build_parser(), run, argv, PROG)


def run(args: argparse.Namespace) -> int:
    from medconv.inference.heatmap import parse_aggregate
    from medconv.runs import load_run

    try:
        aggregate = parse_aggregate(args.aggregate)
    except ValueError as err:
        raise ConfigError(f"--aggregate: {err}") from err
    if not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    loaded = load_run(args.ckpt)
    if loaded.task == "mil":
        return _run_mil(loaded, args)
    if loaded.task != "classify":
        raise ConfigError(f"{loaded.checkpoint}: a {loaded.task} checkpoint, not a classifier; `medconv infer` runs "
                          "classification and MIL checkpoints (embed with a pretraining run: `medconv embed`).")
    positive = _positive(loaded.classes, args.class_name)
    args.out.mkdir(parents=True, exist_ok=True)
    if loaded.modality in ("mammo", "mammo_patch"):
        from medconv.inference.mammo_run import predict_image, run_mammo
        from medconv.inference.mammo_window import predict_window

        return run_mammo(loaded, args, positive, predict_window if loaded.modality == "mammo_patch" else predict_image)
    if loaded.modality != "wsi":
        raise ConfigError(f"{loaded.checkpoint}: its run record names modality {loaded.modality!r}; `medconv infer` runs "
                          "mammo, mammo_patch, wsi and mil models.")
    return _run_wsi(loaded, args, aggregate, positive)


def _positive(classes: list[str], name: str | None) -> int:
    if name is None:
        return len(classes) - 1
    if name not in classes:
        raise ConfigError(f"--class {name!r} is not one of the model's classes {classes}")
    return classes.index(name)


def _run_wsi(loaded, args: argparse.Namespace, aggregate, positive: int) -> int:  # noqa: ANN001
    from medconv.inference.slide_outputs import SlideSettings
    from medconv.inference.slide_scores import InferOptions, run_slides
    from medconv.slides.jobs import slide_jobs

    target_mpp = args.target_mpp or loaded.target_mpp
    tile_size = args.tile_size or loaded.tile_size
    if not target_mpp or not tile_size:
        raise ConfigError(f"{loaded.checkpoint}: its run record names no target_mpp/tile_size; pass --target-mpp and "
                          "--tile-size.")
    jobs, not_slides = slide_jobs(args.inputs, exclude=[args.out], slide_mpp=args.slide_mpp)
    settings = SlideSettings(tuple(loaded.classes), positive, aggregate, args.threshold)
    run_kwargs = trainer_kwargs(args)
    options = InferOptions(
        out_dir=args.out, settings=settings, model=loaded.fingerprint(), target_mpp=float(target_mpp), tile_size=int(tile_size),
        image_size=loaded.image_size, mean=loaded.mean, std=loaded.std, coords_dir=args.coords_dir,
        min_tissue=0.25 if args.min_tissue is None else args.min_tissue,
        batch_size=args.batch_size, num_workers=args.num_workers, overwrite=args.overwrite, backend=args.backend,
        pin_memory=run_kwargs["accelerator"] not in ("cpu",),
    )
    rows, is_main = run_slides(jobs, options, loaded.module, run_kwargs)
    rows += [{"slide": p.name, "path": str(p), "status": "skipped", "n_tiles": 0, "error": why} for p, why in not_slides]
    return _report(args, rows, loaded.classes, is_main)


def _run_mil(loaded, args: argparse.Namespace) -> int:  # noqa: ANN001
    from medconv.inference.mil_run import run_mil

    if (loaded.record.get("model") or {}).get("init_args", {}).get("encoder") or loaded.preprocessing.get("bag_source") == "tiles":
        raise ConfigError(f"{loaded.checkpoint}: an end-to-end MIL run (bag_source: tiles, an encoder trained through the "
                          "bags); `medconv infer` runs MIL models on feature bags only for now. Embed the slides with the "
                          "run's encoder yourself, or train on `medconv embed` features (configs/wsi_abmil.yaml).")
    positive = _positive(loaded.classes, args.class_name)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_mil(loaded, args, positive, trainer_kwargs(args))
    return _report(args, rows, loaded.classes, True)


def _report(args: argparse.Namespace, rows: list[dict], classes: list[str], is_main: bool) -> int:
    """summary.csv, the counts and failures on stderr, and the heatmaps' quality against --masks."""
    from medconv.inference.slide_scores import write_summary

    failed = [r for r in rows if r["status"] == "failed"]
    if is_main:
        summary = write_summary(args.out / "summary.csv", rows, classes)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
        print(f"{PROG}: {counts['ok']} slides done, {counts['skipped']} skipped, {counts['failed']} failed; see {summary}",
              file=sys.stderr)
        for r in failed:
            print(f"  failed {r['slide']}: {r['error']}", file=sys.stderr)
        if args.masks:
            from medconv.inference.quality import evaluate_dir, print_quality

            print_quality(evaluate_dir(args.out, args.masks, [r["slide"] for r in rows if r["status"] != "failed"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
