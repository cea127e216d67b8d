"""`medconv demo-data wsi`: synthetic H&E-like pyramidal TIFF slides with tumour regions, masks, manifest.

Normal tissue: pink stroma with sparse elongated nuclei and glands (rings of small nuclei round pale
lumens). Tumour (odd-numbered slides): sheets of large, dark, crowded, pleomorphic nuclei on a
purplish background, no glands; a tiny CNN tells the two apart on 64-128 px tiles at 0.5-2 mpp.
Some slides carry blue/green pen marks, on glass and over tissue, to exercise the tissue mask.
Everything depends only on the seed and the arguments. `difficulty` picks a preset (medconv.demo.difficulty):
`hard` brings tumour nuclei and colour closer to normal tissue and adds stain variation between and within slides;
`subtle` brings them closer still (calibrated: the reference CNN reaches tile AUROC ~0.85-0.95 with all labels).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from medconv.demo.difficulty import WSI_PRESETS, WSIPreset, check_difficulty, preset_params
from medconv.io.atomic import write_json, write_text
from medconv.io.tiff_writer import write_pyramid_tiff

MASK_DOWNSAMPLE = 16
MANIFEST_COLUMNS = ("slide_path", "label", "patient_id", "mask_path", "mask_downsample", "mpp", "width", "height")
BACKGROUND = (243, 241, 244)
PEN_COLOURS = ((25, 70, 195), (35, 150, 70))  # blue, green: hues the tissue mask treats as ink
#: tissue pieces smaller than this (mm^2) are not drawn: `medconv tile` drops pieces under 0.02 mm^2 as dust,
#: and the demo's tumour masks should only mark tissue that tiling can find
MIN_PIECE_MM2 = 0.05
#: bumped whenever the pixels change for the same arguments (2: RGB stored as RGB by the TIFF writer, no
#: crumbs), so slides cached by an older medconv are regenerated rather than reused
DEMO_VERSION = 2


class DemoSlide(NamedTuple):
    """A rendered slide and its ground truth, all at full resolution (masks boolean, H x W)."""

    rgb: np.ndarray
    tumour: np.ndarray  # tumour within tissue
    tissue: np.ndarray  # where the generator put tissue (gland lumens included, ink over it too)
    pen: np.ndarray  # pixels covered by pen ink, on glass or over tissue


def generate_demo_slides(
    out: str | Path,
    n_slides: int = 6,
    seed: int = 0,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.5,
    overwrite: bool = False,
    difficulty: str = "easy",
) -> Path:
    """Write `n_slides` slides, their tumour masks and `manifest.csv` under `out`; returns the manifest path.

    Slide i is `tumor` when i is odd. Masks (tumour within tissue, all zero for normal slides) are PNGs
    at `MASK_DOWNSAMPLE`. Slides already written with the same parameters are kept unless `overwrite`.
    """
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    params = {"seed": seed, "width": width, "height": height, "mpp": mpp, "version": DEMO_VERSION}
    if check_difficulty(difficulty, WSI_PRESETS) != "easy":  # easy keeps the parameters (and caches) of sets made before presets
        params["difficulty"] = difficulty
        params["preset"] = preset_params(WSI_PRESETS[difficulty])
    params_path = out / "demo_wsi_params.json"
    same = params_path.exists() and json.loads(params_path.read_text()) == params and not overwrite
    write_json(params_path, params)
    rows = []
    for i in range(n_slides):
        name = f"demo_{i:03d}"
        slide_path, mask_path = out / "slides" / f"{name}.tif", out / "masks" / f"{name}_tumor.png"
        tumour = i % 2 == 1
        if not (same and slide_path.exists() and mask_path.exists()):
            slide = render_slide(np.random.default_rng([seed, i]), width, height, tumour=tumour, pen=i % 3 == 0,
                                 min_piece_px=round(MIN_PIECE_MM2 * 1e6 / mpp**2), preset=WSI_PRESETS[difficulty])
            _write_mask(mask_path, _downsample_mask(slide.tumour, MASK_DOWNSAMPLE))
            write_pyramid_tiff(slide_path, slide.rgb, mpp)
        rows.append({
            "slide_path": slide_path.relative_to(out).as_posix(), "label": "tumor" if tumour else "normal",
            "patient_id": f"demo-p{i:03d}", "mask_path": mask_path.relative_to(out).as_posix(),
            "mask_downsample": MASK_DOWNSAMPLE, "mpp": mpp, "width": width, "height": height,
        })
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(out / "manifest.csv", buffer.getvalue())


def render_slide(
    rng: np.random.Generator, width: int, height: int, tumour: bool, pen: bool, min_piece_px: int = 200_000,
    preset: WSIPreset = WSI_PRESETS["easy"],
) -> DemoSlide:
    """RGB uint8 (H, W, 3) slide with its tumour, tissue and pen masks (the ground truth tests compare with).

    min_piece_px: tissue pieces smaller than this are left out (the largest piece is always kept).
    """
    tissue = _drop_small_pieces(_blob_field(rng, width, height, coverage=0.45), min_piece_px)
    tumour_mask = tissue & _tumour_field(rng, tissue) if tumour else np.zeros_like(tissue)
    normal = tissue & ~tumour_mask

    label = tissue.astype(np.uint8) + tumour_mask.astype(np.uint8)  # 0 glass, 1 normal, 2 tumour
    palette = (BACKGROUND, (234, 168, 198), preset.tumour_background)
    texture = _smooth_noise(rng, width, height, scale=24) * 14 + _smooth_noise(rng, width, height, scale=4) * 10
    texture *= label > 0
    texture += rng.standard_normal((height, width), dtype=np.float32) * 3.0
    channels = []
    for c, weight in enumerate((0.6, 1.0, 0.7)):
        lut = np.zeros(256, np.uint8)
        lut[:3] = [p[c] for p in palette]
        channels.append(cv2.add(cv2.LUT(label, lut), texture * weight, dtype=cv2.CV_8U))
    rgb = cv2.merge(channels)

    _draw_glands(rng, rgb, normal, tumour_mask)
    _draw_nuclei(rng, rgb, normal, density=1 / 1400, axes=((3, 4.5), (6, 10)), colour=(112, 72, 152), jitter=14)
    if tumour:
        _draw_nuclei(rng, rgb, tumour_mask, density=preset.tumour_density, axes=preset.tumour_axes,
                     colour=preset.tumour_colour, jitter=preset.tumour_jitter)
    pen_mask = np.zeros((height, width), np.uint8)
    if pen:
        _draw_pen(rng, rgb, pen_mask, width, height)
    if preset.stain_jitter or preset.stain_drift:
        rgb = _vary_stain(rng, rgb, tissue, preset)
    rgb = cv2.GaussianBlur(rgb, (3, 3), 0.7)
    return DemoSlide(rgb, tumour_mask, tissue, pen_mask.astype(bool))


def _vary_stain(rng: np.random.Generator, rgb: np.ndarray, tissue: np.ndarray, preset: WSIPreset) -> np.ndarray:
    """Stain variation as labs and scanners produce it: tissue's optical density scaled per channel for the whole
    slide (1 +- stain_jitter) and by a smooth field within it (+- stain_drift), so colour alone cannot tell
    tumour from normal across slides. Glass and pen strokes off tissue keep their colour."""
    height, width = tissue.shape
    scale = 1 + rng.uniform(-preset.stain_jitter, preset.stain_jitter, 3).astype(np.float32)
    drift = 1 + preset.stain_drift * np.clip(_smooth_noise(rng, width, height, scale=max(64, min(width, height) // 4)), -2, 2)
    od = -np.log((rgb.astype(np.float32) + 1) / 256)
    varied = od * scale * drift[..., None]
    out = np.clip(256 * np.exp(-varied) - 1, 0, 255).round().astype(np.uint8)
    return np.where(tissue[..., None], out, rgb)


def _drop_small_pieces(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Connected pieces of `mask` with at least `min_px` pixels (or the largest piece, if none is that big)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= min(min_px, int(areas[1:].max()))
    keep[0] = False
    return keep[labels]


def _smooth_noise(rng: np.random.Generator, width: int, height: int, scale: int) -> np.ndarray:
    """Zero-mean, unit-ish noise with features about `scale` px wide (noise at low res, upsampled)."""
    small = rng.standard_normal((max(2, height // scale + 2), max(2, width // scale + 2)), dtype=np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    small /= small.std() + 1e-6
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


FIELD_STEP = 8  # smooth shapes are drawn at 1/8 resolution and upsampled


def _blurred_noise(rng: np.random.Generator, width: int, height: int, sigma: float) -> np.ndarray:
    """Smooth unit-variance noise for shapes (drawn at field resolution, so no interpolation facets)."""
    noise = cv2.GaussianBlur(rng.standard_normal((height, width), dtype=np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = -(-height // FIELD_STEP), -(-width // FIELD_STEP)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * FIELD_STEP
    return yy, xx


def _upsample_threshold(field: np.ndarray, threshold: float, width: int, height: int) -> np.ndarray:
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR) > threshold


def _blob_field(rng: np.random.Generator, width: int, height: int, coverage: float) -> np.ndarray:
    """One to three irregular tissue pieces covering about `coverage` of the slide, away from the border."""
    yy, xx = _grid(width, height)
    h, w = yy.shape
    field = _blurred_noise(rng, w, h, sigma=max(w, h) / 30) * 0.35
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        rx, ry = rng.uniform(0.15, 0.3) * width, rng.uniform(0.15, 0.3) * height
        field += np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
    # fade out towards the border so tissue keeps a margin of glass
    edge = np.minimum(np.minimum(xx, width - xx) / width, np.minimum(yy, height - yy) / height)
    field -= np.clip((0.08 - edge) / 0.08, 0, 1) * 3
    return _upsample_threshold(field, float(np.quantile(field, 1 - coverage)), width, height)


def _tumour_field(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """One or two tumour blobs centred on tissue, together about a third of it."""
    height, width = tissue.shape
    yy, xx = _grid(width, height)
    h, w = yy.shape
    small_tissue = tissue[::FIELD_STEP, ::FIELD_STEP]
    ys, xs = np.nonzero(small_tissue)
    field = _blurred_noise(rng, w, h, sigma=max(w, h) / 40) * 0.2
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(len(xs)))
        cx, cy = xs[k] * float(FIELD_STEP), ys[k] * float(FIELD_STEP)
        r = rng.uniform(0.08, 0.14) * max(width, height)
        field += np.exp(-(((xx - cx) / r) ** 2 + ((yy - cy) / (r * rng.uniform(0.7, 1.3))) ** 2))
    return _upsample_threshold(field, float(np.quantile(field[small_tissue], 0.66)), width, height)


def _positions_in(rng: np.random.Generator, region: np.ndarray, n: int) -> np.ndarray:
    h, w = region.shape
    pts = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], axis=1)
    return pts[region[pts[:, 1], pts[:, 0]]]


def _draw_nuclei(rng: np.random.Generator, rgb: np.ndarray, region: np.ndarray, density: float,
                 axes: tuple[tuple[float, float], tuple[float, float]], colour: tuple[int, int, int], jitter: int) -> None:
    n = int(rng.poisson(region.size * density))
    pts = _positions_in(rng, region, n)
    m = len(pts)
    a, b = rng.uniform(*axes[0], m).round().astype(int), rng.uniform(*axes[1], m).round().astype(int)
    angles = rng.uniform(0, 180, m)
    shade = rng.normal(0, jitter, (m, 1)) + rng.normal(0, jitter / 4, (m, 3))  # darker/lighter, little hue change
    colours = np.clip(np.asarray(colour) + shade, 0, 255).astype(int).tolist()
    for (x, y), ai, bi, ang, c in zip(pts.tolist(), a.tolist(), b.tolist(), angles.tolist(), colours, strict=True):
        cv2.ellipse(rgb, (x, y), (ai, bi), ang, 0, 360, c, -1, cv2.LINE_AA)


def _draw_glands(rng: np.random.Generator, rgb: np.ndarray, normal: np.ndarray, tumour: np.ndarray) -> None:
    """Pale lumens ringed by epithelium and a row of small nuclei, only in normal tissue."""
    keep_out = cv2.dilate(tumour.astype(np.uint8), np.ones((121, 121), np.uint8)).astype(bool) if tumour.any() else tumour
    safe = cv2.erode(normal.astype(np.uint8), np.ones((121, 121), np.uint8)).astype(bool) & ~keep_out
    n = int(rng.poisson(normal.sum() / 90_000))
    for x, y in _positions_in(rng, safe, n):
        a, b = rng.uniform(22, 55), rng.uniform(18, 45)
        angle = float(rng.uniform(0, 180))
        centre = (int(x), int(y))
        cv2.ellipse(rgb, centre, (int(a + 12), int(b + 12)), angle, 0, 360, (214, 140, 192), -1, cv2.LINE_AA)
        cv2.ellipse(rgb, centre, (int(a), int(b)), angle, 0, 360, (246, 230, 240), -1, cv2.LINE_AA)
        theta = np.deg2rad(angle)
        for t in np.linspace(0, 2 * np.pi, int((a + b) / 4), endpoint=False):
            ex, ey = (a + 6) * np.cos(t), (b + 6) * np.sin(t)
            px = x + ex * np.cos(theta) - ey * np.sin(theta)
            py = y + ex * np.sin(theta) + ey * np.cos(theta)
            cv2.circle(rgb, (int(px), int(py)), int(rng.integers(3, 5)), (100, 58, 140), -1, cv2.LINE_AA)


def _draw_pen(rng: np.random.Generator, rgb: np.ndarray, drawn: np.ndarray, width: int, height: int) -> None:
    """A wavy pen stroke or two, as pathologists leave on glass and over tissue."""
    for _ in range(int(rng.integers(1, 3))):
        x0, y0 = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.95) * height
        length, angle = rng.uniform(0.3, 0.6) * width, rng.uniform(-0.5, 0.5)
        t = np.linspace(0, 1, 60)
        xs = x0 + t * length * np.cos(angle)
        ys = y0 + t * length * np.sin(angle) + np.sin(t * rng.uniform(4, 10)) * 0.03 * height
        pts = np.stack([xs, ys], axis=1).astype(np.int32).reshape(-1, 1, 2)
        colour = PEN_COLOURS[int(rng.integers(len(PEN_COLOURS)))]
        thickness = int(rng.integers(10, 22))
        cv2.polylines(rgb, [pts], False, colour, thickness, cv2.LINE_AA)
        cv2.polylines(drawn, [pts], False, 1, thickness)


def _downsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """Block majority at `factor` (edges padded), so the mask is exactly `factor` times smaller (rounded up)."""
    h, w = mask.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(mask.astype(np.float32), ((0, ph), (0, pw)))
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.mean(axis=(1, 3)) >= 0.5


def _write_mask(path: Path, mask: np.ndarray) -> None:
    from medconv.io.png import write_mask_png

    write_mask_png(path, mask, MASK_DOWNSAMPLE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medconv demo-data wsi", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (slides/, masks/, manifest.csv)")
    p.add_argument("--n-slides", type=int, default=6, help="number of slides; odd-numbered ones carry tumour")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=4096, help="level-0 width in pixels")
    p.add_argument("--height", type=int, default=3072, help="level-0 height in pixels")
    p.add_argument("--mpp", type=float, default=0.5, help="microns per level-0 pixel written into the TIFF")
    p.add_argument("--overwrite", action="store_true", help="regenerate slides that already exist")
    p.add_argument("--difficulty", choices=tuple(WSI_PRESETS), default="easy",
                   help="easy: the standard set; hard: tumour closer to normal tissue, more stain variation; "
                   "subtle: closer still (tile AUROC ~0.9 with all labels; docs/data.md)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.n_slides < 1 or args.width < 256 or args.height < 256 or args.mpp <= 0:
        print("medconv demo-data wsi: error: need --n-slides >= 1, --width/--height >= 256, --mpp > 0", file=sys.stderr)
        return 2
    manifest = generate_demo_slides(args.out, args.n_slides, args.seed, args.width, args.height, args.mpp, args.overwrite,
                                    args.difficulty)
    print(f"wrote {args.n_slides} slides; manifest {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
