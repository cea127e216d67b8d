"""`<run>/mask_preview.png`: what a masked-image-modelling objective hides and how well it fills the gaps.

A loss curve cannot show a decoder that copies blur or a mask that leaks; a picture can. The callback keeps the
first `n_images` of the first training batch (on the CPU), and after the first and the last training epoch runs
`pl_module.objective` on them in eval mode under no_grad with a fixed seed (the same mask each time; the
training RNG is left untouched). Rows are images; columns: the input, the mask over it (red = masked), the
reconstruction (masked cells from the prediction, visible cells from the target, which is the input for pixel
targets), and the target itself when it is not the input (e.g. per-patch normalised pixels).
Objectives without a `mask` in their output (DINO) get no preview. Written atomically, on global rank 0 only.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch

from medconv import keys
from medconv.callbacks.files import run_dir
from medconv.callbacks.probe import eval_mode
from medconv.io.atomic import atomic_path

FILENAME = "mask_preview.png"


class MaskPreview(L.Callback):
    """Args:
        n_images: rows of the preview (the first images of the first training batch).
        seed: seeds the objective's mask draw for the preview, so first and last epoch show the same mask.
    """

    def __init__(self, n_images: int = 4, seed: int = 0):
        self.n_images, self.seed = n_images, seed
        self._images: torch.Tensor | None = None
        self._first_epoch: int | None = None
        self._written_step: int | None = None
        self._disabled = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._images is not None or self._disabled or not trainer.is_global_zero:
            return
        if not isinstance(batch, dict) or not torch.is_tensor(batch.get(keys.IMAGE)):
            self._disabled = True  # e.g. multi-crop batches for joint-embedding methods: nothing to mask
            return
        self._images = batch[keys.IMAGE][: self.n_images].detach().to("cpu", copy=True)
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self._first_epoch:
            self._write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._written_step != trainer.global_step:  # the last epoch (unless it was also the first)
            self._write(trainer, pl_module)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        if self._images is None or self._disabled or not trainer.is_global_zero:
            return None
        out = self._run_objective(trainer, pl_module)
        if out is None:
            return None
        path = run_dir(trainer) / FILENAME
        self._written_step = trainer.global_step
        render_preview(self._images, *out, path, title=f"{type(pl_module.objective).__name__} after {trainer.global_step} steps")
        return path

    def _run_objective(self, trainer: L.Trainer, pl_module: L.LightningModule):
        device = pl_module.device
        cuda = [device] if device.type == "cuda" else []
        context = getattr(trainer.precision_plugin, "forward_context", None)
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), eval_mode(pl_module.objective):
            torch.manual_seed(self.seed)
            with context() if context is not None else nullcontext():
                result = pl_module.objective({keys.IMAGE: self._images.to(device)})
        if not all(torch.is_tensor(result.get(k)) for k in ("mask", "reconstruction", "target")):
            self._disabled = True
            return None
        return tuple(result[k].detach().float().cpu() for k in ("mask", "reconstruction", "target"))


def compose(mask: torch.Tensor, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked cells from the reconstruction, visible cells from the target (mask: 1 = masked, broadcast over C)."""
    return mask * reconstruction + (1 - mask) * target


def _display(x: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """(C,H,W) -> (H,W[,3]) in [0, 1], stretched by the reference's 1st-99th percentiles (same scale across columns)."""
    lo, hi = np.percentile(reference.numpy(), [1, 99])
    img = ((x.numpy() - lo) / max(hi - lo, 1e-6)).clip(0, 1)
    return img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0]


def render_preview(images: torch.Tensor, mask: torch.Tensor, reconstruction: torch.Tensor, target: torch.Tensor,
                   path: Path, title: str = "") -> Path:
    """Draw the preview grid for (B,C,H,W) images, (B,1,H,W) mask, (B,C,H,W) reconstruction and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(images), len(mask))
    composite = compose(mask[:n], reconstruction[:n], target[:n])
    show_target = target.shape != images.shape or not torch.allclose(target[:n], images[:n].float(), atol=1e-4)
    columns = ["input", "mask (red)", "reconstruction"] + (["target"] if show_target else [])
    fig, axes = plt.subplots(n, len(columns), figsize=(2.4 * len(columns), 2.4 * n + 0.4), squeeze=False)
    for i in range(n):
        grey = _display(images[i].float(), images[i].float())
        rgb = grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)
        m = mask[i, 0].numpy()[..., None]
        overlay = rgb * (1 - 0.5 * m) + np.array([1.0, 0.0, 0.0]) * 0.5 * m
        space = images[i].float() if not show_target else target[i]  # the composite lives in the target's space
        panels = [grey, overlay, _display(composite[i], space)] + ([_display(target[i], target[i])] if show_target else [])
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
