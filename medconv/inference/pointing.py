"""The pointing game: does a mammogram's saliency maximum fall on the annotated lesion?

For each lesion image of a `medconv infer` output (`saliency/<image>.npy`, original pixels) the map's argmax is a
hit when it lies on the lesion, grown by `tolerance_px`. Lesions come from the manifest: a `mask_path` PNG, or
`boxes` ([x0, y0, x1, y1] in original pixels) read as boxes or, with `shape="ellipse"`, as the ellipse inscribed in
each box (mini-MIAS gives circles as centre + radius, whose boxes the adapter writes). `chance` is the grown
lesion's share of the breast: the hit rate of a maximum placed uniformly at random in the breast. The hit rate's
interval resamples patients (their images together), as every medconv interval does.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medconv.errors import InputFileError
from medconv.io.mammo import read_mammogram
from medconv.io.png import read_mask_png
from medconv.mammo.patch_prep import parse_boxes
from medconv.mammo.prep import breast_mask
from medconv.stats.bootstrap import cluster_bootstrap, clusters_of

SHAPES = ("box", "ellipse")


def lesion_mask(boxes: list[list[float]], shape: tuple[int, int], kind: str = "box") -> np.ndarray:
    """Boolean (H, W) mask of the boxes, or of the ellipses inscribed in them."""
    if kind not in SHAPES:
        raise ValueError(f"lesion shape {kind!r}: use one of {SHAPES}")
    mask = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        if kind == "box":
            mask[max(0, int(y0)):max(0, int(np.ceil(y1))), max(0, int(x0)):max(0, int(np.ceil(x1)))] = 1
        else:
            centre = (int(round((x0 + x1 - 1) / 2)), int(round((y0 + y1 - 1) / 2)))
            axes = (max(0, int(round((x1 - x0) / 2))), max(0, int(round((y1 - y0) / 2))))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask > 0


def point(saliency: np.ndarray, lesion: np.ndarray, breast: np.ndarray, tolerance_px: int = 0) -> tuple[bool, float]:
    """(hit, chance) of one map: its argmax on the lesion grown by `tolerance_px`; the grown lesion's breast share."""
    if saliency.shape != lesion.shape:
        raise ValueError(f"saliency map {saliency.shape} and lesion mask {lesion.shape} differ in shape")
    near = lesion
    if tolerance_px > 0:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance_px + 1,) * 2)
        near = cv2.dilate(lesion.astype(np.uint8), disk) > 0
    hit = bool(near.flat[int(np.argmax(np.nan_to_num(saliency.astype(np.float32), nan=-np.inf)))])
    return hit, float((near & breast).sum() / max(int(breast.sum()), 1))


def pointing_table(out: Path, manifest: Path, shape: str = "box", tolerance_px: int = 0) -> pd.DataFrame:
    """One row per scored lesion image of `medconv infer` output `out`: image_id, patient_id, hit, chance, and the
    map's mean on the lesion and on the rest of the breast. Images without a lesion annotation are left out."""
    predictions, manifest = Path(out) / "predictions.csv", Path(manifest)
    if not predictions.is_file():
        raise InputFileError(f"{predictions} not found: give the --out folder of a `medconv infer` run on mammograms")
    if not manifest.is_file():
        raise InputFileError(f"lesion manifest {manifest} not found: give the manifest CSV with boxes or mask_path")
    images = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    if "saliency_map" not in images.columns:
        raise InputFileError(f"{predictions} has no saliency_map column: it is not a mammogram `medconv infer` output")
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if not {"boxes", "mask_path"} & set(table.columns):
        raise InputFileError(f"{manifest} has neither boxes nor mask_path: the pointing game needs lesion annotations")
    by_path = {str((manifest.parent / p).resolve()): row for p, row in zip(table["image_path"], table.to_dict("records"), strict=True)}
    rows = []
    for image in images.to_dict("records"):
        entry = by_path.get(str(Path(image["image_path"]).resolve()))
        if entry is None or image.get("status", "ok") == "failed" or not image.get("saliency_map"):
            continue
        pixels = read_mammogram(image["image_path"]).pixels
        if entry.get("mask_path"):
            lesion = read_mask_png(manifest.parent / entry["mask_path"])[0] > 0
        else:
            boxes = parse_boxes(entry.get("boxes", ""), str(manifest))
            if not boxes:
                continue
            lesion = lesion_mask(boxes, pixels.shape, shape)
        saliency = np.load(Path(out) / image["saliency_map"]).astype(np.float32)
        breast = breast_mask(pixels)
        hit, chance = point(saliency, lesion, breast, tolerance_px)
        rest = breast & ~lesion
        rows.append({"image_id": image["image_id"], "patient_id": entry.get("patient_id", ""), "hit": hit, "chance": chance,
                     "on_lesion": float(saliency[lesion].mean()) if lesion.any() else float("nan"),
                     "rest_of_breast": float(saliency[rest].mean()) if rest.any() else float("nan")})
    return pd.DataFrame(rows, columns=["image_id", "patient_id", "hit", "chance", "on_lesion", "rest_of_breast"])


def hit_rate(table: pd.DataFrame, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """The hit rate with its patient-bootstrap percentile interval, beside the chance rate."""
    n = len(table)
    if n == 0:
        return {"n": 0, "hit_rate": float("nan"), "chance": float("nan")}
    hits = table["hit"].to_numpy(float)
    out = {"n": n, "patients": int(table["patient_id"].nunique()), "hits": int(hits.sum()), "hit_rate": float(hits.mean()),
           "chance": float(table["chance"].mean())}
    if n_boot > 0:
        clusters = clusters_of(table["patient_id"].tolist(), np.ones(n, int))
        result = cluster_bootstrap(lambda w: {"hit_rate": (w @ hits) / w.sum(1)}, clusters, n_boot, seed)
        out["ci_low"], out["ci_high"] = result.interval("hit_rate", level)
        out["resampled"] = result.resampled
    return out
