"""How good are the heatmaps? Tile AUROC against tumour masks, slide AUROC, and lesion FROC (CAMELYON16).

`medconv evaluate-heatmaps OUT --masks MASKS` (or `medconv infer ... --masks MASKS`) reads the `<slide>.h5`
files in OUT. A tile is tumour when at least half of it is under the mask, normal when none of it is (the
ones in between are left out, as in training); a slide is tumour when its mask has any. FROC uses MONAI's
pathology pieces (multi-instance ground truth, isolated tumour cells excluded, probability NMS) at the mask's
resolution, rounded to a power of two as those functions expect.

Intervals are percentile bootstraps over slides (a drawn slide brings all its tiles), stratified by whether the
slide has tumour; `bootstrap` beside them says how many slides and resamples. Besides the tile AUROC pooled over
all slides, `tile_within_tumour` is the tile AUROC inside each tumour slide (tumour tiles against that slide's
normal tiles) and its mean over those slides: the localisation question
("within a tumour slide, does the map point at the tumour?") without the slides' differing score levels mixed
in, which matters for maps that are relative within a slide (a MIL model's attention / its maximum).

On a mammogram output (`predictions.csv` with Grad-CAM `saliency_map`s) it plays the pointing game instead
(`medconv.inference.pointing`): `--masks` is then the manifest with lesion `boxes` or `mask_path`, and the report
is the share of lesion images whose saliency maximum falls on the lesion, with a patient-bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from medconv.errors import InputFileError, MedconvError
from medconv.inference.slide_outputs import read_heatmap, read_scores
from medconv.io.atomic import write_json
from medconv.io.png import read_mask_png
from medconv.tasks.metrics import bootstrap_ci, classification_metrics
from medconv.tiling.geometry import mask_fractions

MASK_SUFFIXES = ("_tumor.png", "_tumour.png", "_mask.png", ".png")
FROC_FPS = (0.25, 0.5, 1, 2, 4, 8)


def find_masks(spec: str | Path, names: list[str]) -> dict[str, tuple[Path, float | None]]:
    """slide name -> (ground truth file, mask downsample or None) from a folder of mask PNGs or a CSV with
    slide_id | slide_path and mask_path[, mask_downsample] or annotation_path (ASAP XML / QuPath GeoJSON)."""
    spec = Path(spec)
    found: dict[str, tuple[Path, float | None]] = {}
    if spec.is_dir():
        for name in names:
            for suffix in MASK_SUFFIXES:
                if (spec / f"{name}{suffix}").is_file():
                    found[name] = (spec / f"{name}{suffix}", None)
                    break
        return found
    if not spec.is_file():
        raise InputFileError(f"{spec}: --masks must be a folder of <slide>_tumor.png files or a CSV with mask_path.")
    table = pd.read_csv(spec, dtype=str, keep_default_na=False)
    if "mask_path" not in table.columns and "annotation_path" not in table.columns:
        raise InputFileError(f"{spec}: needs a mask_path or annotation_path column (and slide_id or slide_path).")
    for row in table.to_dict("records"):
        name = row.get("slide_id") or Path(row.get("slide_path", "")).stem
        truth = row.get("mask_path") or row.get("annotation_path")
        if name not in names:
            continue
        if not truth:  # a slide without annotation in an annotated set (CAMELYON16 normals): no tumour
            found[name] = (Path(), None)
            continue
        path = Path(truth)
        ds = float(row["mask_downsample"]) if row.get("mask_downsample") else None
        found[name] = (path if path.is_absolute() else spec.parent / path, ds)
    return found


def ground_truth(path: Path, ds: float | None, coords: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """(tumour fraction per tile, tumour mask, its downsample) from a mask PNG, annotation polygons, or nothing
    (`Path()`: a slide known to have no tumour)."""
    size0 = float(attrs["patch_size_level0"])
    width, height = int(attrs["slide_width"]), int(attrs["slide_height"])
    if path.suffix.lower() == ".png":
        try:
            mask, recorded = read_mask_png(path)
        except (OSError, ValueError) as err:
            raise InputFileError(f"{path}: unreadable mask ({err}).") from err
        ds = ds or recorded or width / mask.shape[1]
        return mask_fractions(coords, size0, mask, ds), mask, float(ds)
    ds = float(2 ** max(3, math.ceil(math.log2(max(width, height) / 4096))))  # a power of two, <= 4096 px
    shape = (math.ceil(height / ds), math.ceil(width / ds))
    if path == Path():
        return np.zeros(len(coords)), np.zeros(shape, bool), ds
    from medconv.io.annotations import polygon_fractions, rasterize, read_annotations, tumour_region

    region = tumour_region(read_annotations(path))
    return polygon_fractions(region, coords, size0), rasterize(region, shape, ds), ds


def evaluate_dir(out_dir: str | Path, masks: str | Path, names: list[str] | None = None, n_boot: int = 1000,
                 tumour_threshold: float = 0.5) -> dict[str, Any]:
    """Metrics over the slides of `out_dir` that have a mask; written to `out_dir/quality.json`."""
    out_dir = Path(out_dir)
    if names is None:
        names = sorted(p.stem for p in out_dir.glob("*.h5") if not p.name.startswith("."))
    mask_files = find_masks(masks, names)
    if not mask_files:
        raise InputFileError(f"{masks}: no mask for any of the {len(names)} slides in {out_dir}.")
    tile_p, tile_y, slide_p, slide_y, froc_items, per_slide = [], [], [], [], [], {}
    for name, (mask_path, ds) in sorted(mask_files.items()):
        h5 = out_dir / f"{name}.h5"
        if not h5.exists():
            continue
        coords, scores, attrs, file_attrs = read_scores(h5)
        classes = json.loads(file_attrs["classes"])
        positive = classes.index(file_attrs["positive_class"])
        fractions, mask, ds = ground_truth(mask_path, ds, coords, attrs)
        keep = (fractions >= tumour_threshold) | (fractions == 0)
        tile_p.append(scores[keep, positive])
        tile_y.append((fractions[keep] >= tumour_threshold).astype(int))
        slide_p.append(float(file_attrs["score"]))
        slide_y.append(int(mask.any()))
        heat, heat_ds = read_heatmap(h5)
        froc_items.append((heat[positive], heat_ds, mask, ds, float(attrs["slide_mpp"]), float(attrs["patch_size_level0"])))
        per_slide[name] = {"n_tiles": int(keep.sum()), "tumour_tiles": int(tile_y[-1].sum()), "score": slide_p[-1]}
        if 0 < tile_y[-1].sum() < len(tile_y[-1]):  # a tumour slide with normal tiles too: the map's AUROC inside it
            per_slide[name]["tile_auroc"] = _auroc(tile_p[-1], tile_y[-1])
    if not per_slide:
        raise InputFileError(f"{out_dir}: none of the slides with masks has inference outputs (<slide>.h5).")
    report: dict[str, Any] = {"n_slides": len(per_slide), "slides": per_slide}
    tile_slides = np.repeat(list(per_slide), [len(t) for t in tile_p])  # tiles of one slide are resampled together
    report["tile"] = _binary_metrics(np.concatenate(tile_p), np.concatenate(tile_y), n_boot, tile_slides)
    within = {name: s["tile_auroc"] for name, s in per_slide.items() if "tile_auroc" in s}
    report["tile_within_tumour"] = {"mean_auroc": float(np.mean(list(within.values()))) if within else float("nan"),
                                    "n_slides": len(within), "slides": within}
    report["slide"] = _binary_metrics(np.asarray(slide_p), np.asarray(slide_y), n_boot, list(per_slide))
    report["froc"] = lesion_froc(froc_items)
    write_json(out_dir / "quality.json", report)
    return report


def _auroc(p: np.ndarray, y: np.ndarray) -> float:
    return float(classification_metrics(np.stack([1 - p, p], axis=1), y)["auroc"])


def _binary_metrics(p: np.ndarray, y: np.ndarray, n_boot: int, slides: list | np.ndarray) -> dict[str, Any]:
    """AUROC/AUPRC with percentile intervals over resampled slides (a drawn slide brings all its tiles: tiles of
    one slide are correlated, and counting them as independent would make the interval too narrow)."""
    probs = np.stack([1 - p, p], axis=1)
    out: dict[str, Any] = {k: v for k, v in classification_metrics(probs, y).items() if k in ("n", "auroc", "auprc")}
    out["positives"] = float(y.sum())
    ci = bootstrap_ci(probs, y, n_boot=n_boot, patient_ids=list(slides), unit="slides")
    for name, (low, high) in ci.intervals.items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    if ci.info:
        out["bootstrap"] = ci.info
    return out


def lesion_froc(items: list[tuple], grow_um: float = 75.0, itc_um: float = 200.0) -> dict[str, Any]:
    """CAMELYON16 FROC: mean sensitivity at 1/4 ... 8 false positives per slide, via MONAI's pathology utilities.

    items: (heat (H, W), heat downsample, mask, mask downsample, mpp, tile size level-0) per slide.
    """
    from monai.apps.pathology.utils import PathologyProbNMS, compute_isolated_tumor_cells, compute_multi_instance_mask
    from monai.metrics import compute_fp_tp_probs, compute_froc_curve_data, compute_froc_score

    fp_all, tp_all, targets = [], [], 0
    for heat, heat_ds, mask, mask_ds, mpp, size0 in items:
        level = max(0, round(math.log2(mask_ds)))  # MONAI's functions work at power-of-two levels
        scale = 2**level
        shape = (max(1, math.ceil(mask.shape[0] * mask_ds / scale)), max(1, math.ceil(mask.shape[1] * mask_ds / scale)))
        gt = cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST)
        prob = cv2.resize(np.nan_to_num(heat, nan=0.0).astype(np.float32),
                          (max(1, round(heat.shape[1] * heat_ds / scale)), max(1, round(heat.shape[0] * heat_ds / scale))),
                          interpolation=cv2.INTER_NEAREST)
        prob = _fit(prob, shape)
        spacing = mpp * scale
        instances = compute_multi_instance_mask(gt, grow_um / (spacing * 2))
        with warnings.catch_warnings():  # MONAI uses scikit-image's deprecated major_axis_length
            warnings.simplefilter("ignore", FutureWarning)
            itc = compute_isolated_tumor_cells(instances, (itc_um + grow_um) / spacing) if instances.max() else []
        nms = PathologyProbNMS(sigma=0.0, prob_threshold=0.5, box_size=max(3, round(2 * size0 / scale)))
        found = nms(prob, resolution_level=level)
        probs = np.array([f[0] for f in found], dtype=np.float64)
        rows = np.array([f[1] for f in found], dtype=np.int64)
        cols = np.array([f[2] for f in found], dtype=np.int64)
        fp, tp, n = compute_fp_tp_probs(probs, rows, cols, instances, labels_to_exclude=itc, resolution_level=level)
        fp_all.extend(np.asarray(fp).tolist())
        tp_all.extend(np.asarray(tp).tolist())
        targets += int(n)
    if targets == 0:
        return {"score": float("nan"), "targets": 0, "note": "no tumour lesion in the masks"}
    fps, sens = compute_froc_curve_data(np.asarray(fp_all), np.asarray(tp_all), targets, len(items))
    score = float(compute_froc_score(fps, sens, FROC_FPS))
    at = {f"sens_at_{t:g}_fp": float(np.interp(t, fps[::-1], sens[::-1])) for t in FROC_FPS}
    return {"score": score, "targets": targets, **at}


def _fit(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad to `shape` (the heatmap's last cells may pass the slide's edge)."""
    out = np.zeros(shape, array.dtype)
    h, w = min(shape[0], array.shape[0]), min(shape[1], array.shape[1])
    out[:h, :w] = array[:h, :w]
    return out


def print_quality(report: dict[str, Any]) -> None:
    tile, slide, froc = report["tile"], report["slide"], report["froc"]

    def ci(m: dict) -> str:
        return f" [{m['auroc_ci_low']:.3f}, {m['auroc_ci_high']:.3f}]" if "auroc_ci_low" in m else ""

    print(f"heatmap quality over {report['n_slides']} slides with masks:", file=sys.stderr)
    print(f"  tile AUROC  {tile.get('auroc', float('nan')):.4f}{ci(tile)} ({int(tile['n'])} tiles, "
          f"{int(tile['positives'])} tumour)", file=sys.stderr)
    within = report.get("tile_within_tumour") or {}
    if within.get("n_slides"):
        print(f"  tile AUROC within tumour slides {within['mean_auroc']:.4f} (mean of {within['n_slides']} slides)",
              file=sys.stderr)
    print(f"  slide AUROC {slide.get('auroc', float('nan')):.4f}{ci(slide)} ({int(slide['n'])} slides)", file=sys.stderr)
    print(f"  FROC        {froc['score']:.4f} ({froc['targets']} lesions)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medconv evaluate-heatmaps", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="a `medconv infer` output folder")
    p.add_argument("--masks", required=True, help="folder of <slide>_tumor.png, or CSV with slide_id|slide_path, mask_path; "
                   "for mammograms: the manifest with lesion boxes or mask_path")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (0: none)")
    p.add_argument("--lesion-shape", choices=("box", "ellipse"), default="box",
                   help="mammograms: read boxes as boxes, or as the ellipses inscribed in them (circle annotations)")
    p.add_argument("--tolerance-px", type=int, default=0, help="mammograms: a maximum this close to a lesion is a hit")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if _is_mammo_output(args.out):
            return _pointing(args)
        report = evaluate_dir(args.out, args.masks, n_boot=args.bootstrap)
    except MedconvError as err:
        print(f"medconv evaluate-heatmaps: error: {err}", file=sys.stderr)
        return 2
    print_quality(report)
    print(f"wrote {args.out / 'quality.json'}", file=sys.stderr)
    return 0


def _is_mammo_output(out: Path) -> bool:
    predictions = out / "predictions.csv"
    if not predictions.is_file():
        return False
    with predictions.open() as table:
        return "saliency_map" in table.readline().strip().split(",")


def _pointing(args: argparse.Namespace) -> int:
    from medconv.inference.pointing import hit_rate, pointing_table

    table = pointing_table(args.out, Path(args.masks), shape=args.lesion_shape, tolerance_px=args.tolerance_px)
    report = {**hit_rate(table, args.bootstrap), "lesion_shape": args.lesion_shape, "tolerance_px": args.tolerance_px}
    table.to_csv(args.out / "pointing_images.csv", index=False)
    write_json(args.out / "pointing.json", report)
    ci = f" [{report['ci_low']:.3f}, {report['ci_high']:.3f}]" if "ci_low" in report else ""
    print(f"pointing game over {report['n']} lesion images: hit rate {report['hit_rate']:.3f}{ci} "
          f"(chance {report['chance']:.3f})", file=sys.stderr)
    print(f"wrote {args.out / 'pointing.json'} and {args.out / 'pointing_images.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
