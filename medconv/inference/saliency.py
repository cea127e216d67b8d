"""Saliency for mammogram classifiers: Grad-CAM on the backbone's last stage (MONAI's GradCAM), and the map
taken from the prepared frame (cropped, mirrored, resized, padded) back to the original image's pixels."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from medconv.mammo.prep import PreparedMammo


def last_stage(module: nn.Module) -> str:
    """Dotted name of the backbone's last feature stage inside a ClassificationModule (timm's feature_info)."""
    model = module.backbone.model
    info = getattr(model, "feature_info", None)
    names = [i["module"] for i in info] if isinstance(info, list) else []
    names = names or [name for name, _ in model.named_children() if name not in ("head", "fc", "global_pool", "norm")]
    if not names:
        raise ValueError(f"cannot find the last stage of {type(model).__name__} for Grad-CAM")
    return f"backbone.model.{names[-1]}"


def scale_each(maps: torch.Tensor) -> torch.Tensor:
    """Each map of the batch min-max scaled to [0, 1], its direction kept (1 = the strongest evidence for the
    class); a flat map becomes 0. MONAI's default GradCAM postprocessing maps (min, max) to (1, 0), which turns
    the strongest evidence into the weakest."""
    flat = maps.flatten(1)
    low = flat.amin(1).view(-1, *[1] * (maps.ndim - 1))
    span = (flat.amax(1) - flat.amin(1)).view(-1, *[1] * (maps.ndim - 1))
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def grad_cam(module: nn.Module, images: torch.Tensor, class_index: int) -> np.ndarray:
    """(B, H, W) Grad-CAM maps in [0, 1] at the input's size, for `class_index`: high where the last stage's
    features raise that class's logit."""
    from monai.visualize import GradCAM

    cam = GradCAM(nn_module=module, target_layers=last_stage(module), postprocessing=scale_each)
    with torch.enable_grad():
        maps = cam(x=images.requires_grad_(True), class_idx=class_index)
    return maps[:, 0].detach().float().cpu().numpy()


def to_original(saliency: np.ndarray, prep: PreparedMammo, original_shape: tuple[int, int]) -> np.ndarray:
    """A map over the prepared image (H, W) -> the original image's pixels: drop the padding, resize to the crop,
    undo the mirror, put it back at the crop box; zero outside the crop."""
    rh, rw = prep.resized_hw
    y0, x0, y1, x1 = prep.crop_box
    content = np.ascontiguousarray(np.asarray(saliency, np.float32)[:rh, :rw])
    crop = cv2.resize(content, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    if prep.flipped:
        crop = crop[:, ::-1]
    out = np.zeros(tuple(int(v) for v in original_shape[:2]), np.float32)
    out[y0:y1, x0:x1] = crop
    return out


def overlay(pixels: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 of the greyscale mammogram (min-max windowed) with the saliency in a jet colour map on top;
    the same height and width as `pixels`."""
    grey = np.asarray(pixels, np.float32)
    low, high = np.percentile(grey, [0.5, 99.5])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    base = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    sal = np.clip(np.nan_to_num(saliency), 0, 1)
    colour = cv2.applyColorMap((sal * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    weight = (alpha * sal)[..., None]
    return (base * (1 - weight) + colour * weight).astype(np.uint8)
