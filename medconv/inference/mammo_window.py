"""A mammogram patch classifier run as a sliding window over whole mammograms (the patch-to-image recipe of
Shen et al. 2019): the image is prepared as the patch training prepared it (chest wall left, resampled to the
run's mm/px), cut into the grid of patches inside the breast, every patch scored; the image's probabilities are
those of its most suspicious patch, and its map is the positive-class probability of the patches over each pixel
(mean where patches overlap), in original pixels.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from medconv.errors import InputFileError
from medconv.mammo.dataset import mammo_sample
from medconv.mammo.patch_prep import PatchOptions, plan_patches, prepare_image

BATCH = 32


def predict_window(run: Any, row: dict, positive: int, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class probabilities of the most suspicious patch, patch-probability map in original pixels, original pixels)."""
    from medconv.io.mammo import read_mammogram
    from medconv.mammo.prep import breast_mask, infer_laterality

    recipe = run.preprocessing
    spacing, size = float(recipe["spacing_mm"]), int(recipe["patch_size"])
    source = row["image_path"]
    given = row.get("pixel_spacing_mm") or None
    image, _, _ = prepare_image(source, spacing, float(given) if given else None, recipe.get("pixel_spacing_mm"))
    options = PatchOptions(spacing_mm=spacing, patch_size=size, overlap=float(recipe.get("overlap") or 0.0),
                           min_breast=float(recipe.get("min_breast") or 0.5))
    positions, _, _ = plan_patches(breast_mask(image), None, options, np.random.default_rng(0))
    if not len(positions):
        raise InputFileError(f"{source}: no {size}px patch at {spacing} mm/px holds enough breast "
                             f"(min_breast {options.min_breast}); is it a mammogram?")
    probs = _score(run, image, positions, size, device)
    heat, count = np.zeros(image.shape, np.float32), np.zeros(image.shape, np.float32)
    for (x, y), p in zip(positions, probs[:, positive], strict=True):
        heat[y : y + size, x : x + size] += p
        count[y : y + size, x : x + size] += 1
    heat = np.divide(heat, count, out=np.zeros_like(heat), where=count > 0)
    pixels = np.asarray(read_mammogram(source).pixels)
    if infer_laterality(pixels, breast_mask(pixels)) == "R":  # prepare_image mirrored it: mirror the map back
        heat = heat[:, ::-1]
    heat = cv2.resize(np.ascontiguousarray(heat), (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
    return probs[int(probs[:, positive].argmax())], heat, pixels


def _score(run: Any, image: np.ndarray, positions: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    """Class probabilities (N, C) of the patches, normalised as in training, zero beyond the image."""
    out = []
    for start in range(0, len(positions), BATCH):
        batch = []
        for x, y in positions[start : start + BATCH]:
            patch = np.zeros((size, size), np.float32)
            part = image[y : y + size, x : x + size]
            patch[: part.shape[0], : part.shape[1]] = part
            batch.append(mammo_sample(patch, 0, {"image_path": "", "patient_id": ""}, run.in_chans)["image"])
        with torch.inference_mode():
            out.append(run.module(torch.stack(batch).to(device)).float().softmax(1).cpu().numpy())
    return np.concatenate(out)
