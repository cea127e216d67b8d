"""`medconv infer` for mammogram classifiers: the training preprocessing, probabilities per image, per breast and
per exam (max over views, as the training metrics), and a Grad-CAM overlay per image in original pixels.

Outputs in --out: predictions.csv (one row per image, status + error), predictions_breast.csv,
predictions_exam.csv, saliency/<image>_saliency.png (the overlay) and saliency/<image>.npy (the map itself:
float16 in [0, 1], the original image's height x width, 1 = the strongest evidence for the positive class). A rerun with the same checkpoint keeps the images already
done (their rows, overlays and maps) and runs the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medconv.errors import ManifestError, MedconvError
from medconv.io.atomic import save_npy, write_json, write_text
from medconv.tiling.inputs import find_inputs

#: (run, manifest row, positive class, device) -> (class probabilities, map in original pixels, original pixels)
Predict = Callable[[Any, dict, int, torch.device], tuple[np.ndarray, np.ndarray, np.ndarray]]
MAMMO_SUFFIXES = {".png", ".dcm", ".dicom", ".pgm"}
ID_COLUMNS = ("image_path", "patient_id", "exam_id", "laterality", "view")


def mammo_table(inputs: list[str], exclude: list[Path]) -> pd.DataFrame:
    """Rows with image_path, patient_id, exam_id, laterality, view from manifests and files/folders/globs.

    Without a manifest an image is its own patient and exam (its file stem), laterality read from the file.
    """
    frames = []
    for item in inputs:
        if item.lower().endswith(".csv") and Path(item).is_file():
            table = pd.read_csv(item, dtype=str, keep_default_na=False)
            if "image_path" not in table.columns:
                raise ManifestError(f"{item}: needs an image_path column (has {list(table.columns)}).")
            base = Path(item).parent
            table["image_path"] = [str(p if Path(p).is_absolute() else base / p) for p in table["image_path"]]
            frames.append(table)
        else:
            found, _ = find_inputs([item], exclude=exclude) if Path(item).is_dir() else ([(Path(item).stem, Path(item))], [])
            paths = [str(p) for _, p in found if Path(item).is_file() or p.suffix.lower() in MAMMO_SUFFIXES]
            frames.append(pd.DataFrame({"image_path": paths}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"image_path": []})
    for column in ID_COLUMNS[1:]:
        if column not in table.columns:
            table[column] = ""
    stems = [Path(p).stem for p in table["image_path"]]
    table["patient_id"] = [p or s for p, s in zip(table["patient_id"], stems, strict=True)]
    table["exam_id"] = [e or p for e, p in zip(table["exam_id"], table["patient_id"], strict=True)]
    table["laterality"] = table["laterality"].str.upper().str[:1]
    table["image_id"] = _unique_ids(table["image_path"].tolist())
    return table.drop_duplicates("image_path").reset_index(drop=True)


def _unique_ids(paths: list[str]) -> list[str]:
    """File stems, prefixed by their folder where two images share a stem (their overlays must not collide)."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}_{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems, strict=True)]


def predict_image(loaded: Any, row: dict, positive: int, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class probabilities, Grad-CAM in original pixels, original pixels) for one mammogram."""
    from medconv.inference.saliency import grad_cam, to_original
    from medconv.io.mammo import read_mammogram
    from medconv.mammo.dataset import mammo_sample
    from medconv.mammo.prep import preprocess

    mammo = read_mammogram(row["image_path"])
    prep = preprocess(mammo.pixels, loaded.image_size, laterality=row.get("laterality") or mammo.laterality or None,
                      source=row["image_path"])
    x = mammo_sample(prep.image, 0, row, loaded.in_chans)["image"][None].to(device)
    with torch.inference_mode():
        probs = loaded.module(x).float().softmax(1)[0].cpu().numpy()
    cam = grad_cam(loaded.module, x.clone(), positive)[0]
    return probs, to_original(cam, prep, mammo.pixels.shape), np.asarray(mammo.pixels)


def group_predictions(images: pd.DataFrame, columns: list[str], prob_columns: list[str]) -> pd.DataFrame:
    """Max over the views of each group (a lesion seen in any view counts), with the number of views."""
    ok = images[images["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=[*columns, *prob_columns, "n_images"])
    grouped = ok.groupby(columns, sort=True)
    out = grouped[prob_columns].max()
    out["n_images"] = grouped.size()
    return out.reset_index()


def run_mammo(loaded: Any, args: argparse.Namespace, positive: int, predict: Predict | None = None) -> int:
    """`predict`: `predict_image` (a whole-image classifier: Grad-CAM map) by default, or
    `mammo_window.predict_window` (a patch classifier as a sliding window: the patch-probability map)."""
    predict = predict or predict_image
    from tqdm import tqdm

    from medconv.inference.saliency import overlay
    from medconv.io.png import write_png

    out: Path = args.out
    table = mammo_table(args.inputs, exclude=[out])
    classes = loaded.classes
    prob_columns = [f"prob_{c}" for c in classes]
    device = torch.device("cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu")
    loaded.module.to(device).eval()
    done = {} if args.overwrite else _previous(out, loaded.fingerprint())
    rows = []
    for row in tqdm(table.to_dict("records"), desc="mammograms", unit="image", disable=None):
        if row["image_path"] in done:
            rows.append(done[row["image_path"]] | {"status": "skipped"})
            continue
        start = time.perf_counter()
        overlay_path = out / "saliency" / f"{row['image_id']}_saliency.png"
        map_path = out / "saliency" / f"{row['image_id']}.npy"
        try:
            probs, cam, pixels = predict(loaded, row, positive, device)
            save_npy(map_path, cam.astype(np.float16))
            write_png(overlay_path, overlay(pixels, cam))
        except (MedconvError, OSError, ValueError) as err:
            rows.append({**row, "status": "failed", "error": str(err), "seconds": round(time.perf_counter() - start, 3)})
            continue
        predicted = classes[positive] if len(classes) == 2 and probs[positive] >= args.threshold else \
            classes[1 - positive] if len(classes) == 2 else classes[int(probs.argmax())]
        rows.append({**row, "status": "ok", **dict(zip(prob_columns, probs.tolist(), strict=True)),
                     "score": float(probs[positive]), "predicted_class": predicted, "overlay": str(overlay_path.relative_to(out)),
                     "saliency_map": str(map_path.relative_to(out)),
                     "seconds": round(time.perf_counter() - start, 3), "error": ""})
    columns = ["image_id", *ID_COLUMNS, "status", *prob_columns, "score", "predicted_class", "overlay", "saliency_map", "seconds",
               "error"]
    images = pd.DataFrame(rows).reindex(columns=columns)
    write_text(out / "predictions.csv", images.to_csv(index=False, lineterminator="\n"))
    breast = group_predictions(images, ["exam_id", "laterality"], prob_columns)
    write_text(out / "predictions_breast.csv", breast.to_csv(index=False, lineterminator="\n"))
    exam = group_predictions(images, ["exam_id"], prob_columns)
    write_text(out / "predictions_exam.csv", exam.to_csv(index=False, lineterminator="\n"))
    write_json(out / "infer_params.json", {"model": loaded.fingerprint(), "classes": classes})
    failed = images[images["status"] == "failed"]
    print(f"medconv infer: {int((images['status'] == 'ok').sum())} images done, {int((images['status'] == 'skipped').sum())} "
          f"skipped, {len(failed)} failed; see {out / 'predictions.csv'}", file=sys.stderr)
    for r in failed.to_dict("records"):
        print(f"  failed {r['image_path']}: {r['error']}", file=sys.stderr)
    return 1 if len(failed) else 0


def _previous(out: Path, fingerprint: str) -> dict[str, dict]:
    """Rows of a previous run with the same checkpoint whose overlay and map exist: those images are done (a run
    from before the maps were written is redone: its overlays were drawn with the flipped Grad-CAM)."""
    params, csv = out / "infer_params.json", out / "predictions.csv"
    if not params.is_file() or not csv.is_file():
        return {}
    try:
        if json.loads(params.read_text()).get("model") != fingerprint:
            return {}
        table = pd.read_csv(csv, dtype={c: str for c in ("image_id", *ID_COLUMNS)}, keep_default_na=False)
    except (ValueError, OSError):
        return {}
    table = table[table["status"].isin(["ok", "skipped"])]
    return {r["image_path"]: r for r in table.to_dict("records")
            if (out / str(r["overlay"])).is_file() and (out / str(r.get("saliency_map") or "-")).is_file()}
