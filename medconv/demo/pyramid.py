"""A large JPEG pyramid TIFF of H&E-like texture, for reader benchmarks.

Unlike `demo.wsi` (small slides with tumour masks and a manifest, for training), this writes one big
slide fast, streamed tile by tile: its only job is to make tile reading cost what it costs on a real scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def he_texture(size: int = 1024, seed: int = 0) -> np.ndarray:
    """Stain-mixed tissue: eosin with fibres, clustered nuclei, lumen holes, sensor noise.

    Flat colour would compress to a few hundred bytes a tile and make every reader look fast; this gives
    JPEG tiles of realistic size (about 13 KB at q80 for 256 x 256).
    """
    import cv2

    rng = np.random.default_rng(seed)

    def smooth(sigma: float) -> np.ndarray:
        small = max(8, int(size / max(sigma / 4, 1)))
        n = rng.standard_normal((small, small)).astype(np.float32)
        n = cv2.GaussianBlur(n, (0, 0), sigma * small / size)
        n = cv2.resize(n, (size, size), interpolation=cv2.INTER_CUBIC)
        return n / (n.std() + 1e-6)

    eosin = 0.35 + 0.12 * smooth(40) + 0.08 * smooth(3) + 0.05 * smooth(1)
    nuclei = np.zeros((size, size), np.float32)
    count = size * size // 500
    xs, ys = rng.integers(0, size, count), rng.integers(0, size, count)
    field = smooth(60)
    keep = field[ys, xs] > rng.uniform(-1.2, 1.5, count)
    for x, y in zip(xs[keep], ys[keep], strict=True):
        axes = (int(rng.uniform(3, 7)), int(rng.uniform(2.5, 5)))
        cv2.ellipse(nuclei, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.6, 1)), -1)
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), 1.0) * (1 + 0.25 * smooth(1))
    holes = np.clip((smooth(25) - 1.3) * 3, 0, 1)
    haem = (0.08 + 0.9 * np.clip(nuclei, 0, None)) * (1 - holes)
    eosin = np.clip(eosin, 0, None) * (1 - holes)
    h_od = np.array([0.65, 0.70, 0.29], np.float32) * 1.6  # Ruifrok & Johnston stain vectors
    e_od = np.array([0.07, 0.99, 0.11], np.float32) * 1.2
    od = haem[..., None] * h_od + eosin[..., None] * e_od
    rgb = 250 * np.exp(-od) + rng.normal(0, 3, (size, size, 3)).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def generate_slide(path: str | Path, size: int = 20000, tile: int = 256, quality: int = 80, mpp: float = 0.25) -> Path:
    """A size x size JPEG pyramid TIFF of H&E-like tissue, streamed tile by tile (level 0 is never held).

    Each tile is a randomly placed, rotated crop of one texture, so tiles differ (no cache can cheat) at
    the cost of one texture. The writer renames a finished file into place: no half-written slide.
    """
    from medconv.io.tiff_writer import write_pyramid_tiff_tiles

    texture = he_texture(min(1024, max(tile * 2, size)))
    span = texture.shape[0] - tile

    def make_tile(col: int, row: int) -> np.ndarray:
        rng = np.random.default_rng((col, row))
        y, x = rng.integers(0, span + 1, 2)
        t = texture[y : y + tile, x : x + tile]
        return np.rot90(t, int(rng.integers(4)))

    return write_pyramid_tiff_tiles(path, size, size, make_tile, mpp=mpp, tile=tile, quality=quality)
