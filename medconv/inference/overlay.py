"""The heatmap PNG: one class's probability over the slide thumbnail, with a colour bar naming the class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medconv.io.atomic import atomic_path

#: longer side of the rendered thumbnail, pixels
OVERLAY_SIDE = 1024


def render_overlay(path: str | Path, thumbnail: np.ndarray, heat: np.ndarray, class_name: str, title: str,
                   cover: tuple[float, float] = (1.0, 1.0), alpha: float = 0.5, label: str | None = None) -> Path:
    """Write `heat` (H, W; NaN = no tile) over `thumbnail` (RGB, the whole slide), colour bar from 0 to 1
    labelled `label` (default `P(class_name)`).

    cover: the heatmap's extent as a fraction of the slide's (width, height); its last cells may reach past
    the slide's edge.
    """
    from matplotlib.figure import Figure  # no pyplot: safe in the writer thread, no global figure state

    h, w = thumbnail.shape[:2]
    fig_w = 7.0
    fig = Figure(figsize=(fig_w, fig_w * h / max(w, 1) * 0.92 + 0.6), dpi=100)
    ax = fig.subplots()
    ax.imshow(thumbnail, extent=(0, w, h, 0))
    masked = np.ma.masked_invalid(heat)
    image = ax.imshow(masked, cmap="inferno", vmin=0.0, vmax=1.0, alpha=alpha,
                      extent=(0, w * cover[0], h * cover[1], 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(label or f"P({class_name})")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
