"""Synthetic screening mammograms with a real, learnable signal: `medconv demo-data mammo`.

Per patient one exam: left and right breast, CC and MLO (4 images). A breast is a half-ellipse
against the chest wall with 1/f^beta texture (fibroglandular density varies by patient), a skin line,
a pectoral muscle on MLO, sometimes a burned-in "L"/"R" marker. Left breasts have the chest wall on
the image's left edge, right breasts on the right edge, so laterality matters. About 40% of patients
have one affected breast whose two views both show the lesion: a spiculated mass (most) or a
calcification cluster. Lesion masks (PNG) and boxes are saved; contrast is `lesion_contrast` x the
breast's intensity range above the local background.

About half of the patients are written as DICOM (PixelSpacing, ImageLaterality, ViewPosition,
BitsStored 12/14/16, MONOCHROME1/2, RescaleSlope/Intercept and VOI windowing on some), the rest as
16-bit PNG (no metadata; laterality/view only in the manifest). `read_mammogram` recovers the same
brightness sense from all of them. Output is byte-identical for the same parameters.

`difficulty` picks a preset (medconv.demo.difficulty): `easy` is the set above; `hard` draws smaller, fainter
lesions in busier texture, for experiments that need headroom below AUROC 1.0 (scarce labels, pretraining).
There is no `subtle` mammogram preset (slides have one): hard mammograms are already near chance at 5% labels.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import fft

from medconv.demo.difficulty import MAMMO_PRESETS, MammoPreset, check_difficulty, demo_root, preset_params
from medconv.demo.mammo_files import png_bytes, write_dicom, write_png16
from medconv.io.atomic import write_bytes, write_json

MANIFEST = "manifest.csv"
PARAMS = "demo_params.json"
FORMAT_VERSION = 1
COLUMNS = [
    "image_path", "label", "patient_id", "exam_id", "laterality", "view",
    "mask_path", "boxes", "lesion_type", "pixel_spacing_mm",
]  # fmt: skip


def generate_demo_mammo(
    out: Path,
    n_patients: int = 120,
    seed: int = 0,
    image_size: tuple[int, int] = (1024, 800),
    pixel_spacing_mm: float = 0.2,
    lesion_contrast: tuple[float, float] = (0.15, 0.4),
    positive_fraction: float = 0.4,
    patient_prefix: str = "DEMO",
    difficulty: str = "easy",
) -> Path:
    """Write the demo set under `out`; return `out/manifest.csv`. Another `seed` and `patient_prefix` make an
    "external site": new patients whose ids cannot collide with the training set's.

    Idempotent: when a manifest written with the same parameters exists it is returned untouched.
    Images and masks are written first, the manifest last, each atomically, so a manifest's
    presence means the set is complete.
    """
    out = Path(out)
    params = {
        "version": FORMAT_VERSION,
        "n_patients": int(n_patients),
        "seed": int(seed),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "pixel_spacing_mm": float(pixel_spacing_mm),
        "lesion_contrast": [float(lesion_contrast[0]), float(lesion_contrast[1])],
        "positive_fraction": float(positive_fraction),
        "patient_prefix": str(patient_prefix),
    }
    if check_difficulty(difficulty, MAMMO_PRESETS) != "easy":  # easy keeps the parameters (and caches) of sets made before presets
        params["difficulty"] = difficulty
        params["preset"] = preset_params(MAMMO_PRESETS[difficulty])
    manifest, params_path = out / MANIFEST, out / PARAMS
    if manifest.is_file() and params_path.is_file():
        try:
            if json.loads(params_path.read_text()) == params:
                return manifest
        except json.JSONDecodeError:
            pass
    out.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)  # parameters changed: the old manifest no longer describes the files
    rows = []
    for index in range(n_patients):
        rows += _write_patient(out, index, params)
    write_json(params_path, params)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    write_bytes(manifest, frame.to_csv(index=False, lineterminator="\n").encode())
    return manifest


def demo_manifest(
    demo_dir: str | Path, n_patients: int, seed: int, image_size: tuple[int, int], lesion_contrast: tuple[float, float],
    difficulty: str = "easy",
) -> Path:
    """The demo set a datamodule trains on when its manifest is null. Smaller images keep the breast's physical
    size (coarser pixels), so lesions stay in proportion; the same arguments give the same files, so the
    patch and whole-image recipes can share one set (and, with the same seed, one split). A difficulty other
    than easy lives in `<demo_dir>_<difficulty>`, so presets never overwrite each other."""
    spacing = 0.2 * 1024 / image_size[0]
    return generate_demo_mammo(demo_root(demo_dir, difficulty), n_patients=n_patients, seed=seed, image_size=tuple(image_size),
                               pixel_spacing_mm=spacing, lesion_contrast=tuple(lesion_contrast), difficulty=difficulty)


# --------------------------------------------------------------------------- one patient


@dataclass
class _Patient:
    density: float  # fraction of the breast that is fibroglandular
    depth: float  # breast depth (chest wall to nipple) as a fraction of the image width
    half_height: float  # CC half-height as a fraction of the image height
    affected: str | None  # "L" / "R" / None
    lesion_type: str  # "mass" / "calcification" / ""
    lesion_mm: float  # mass diameter or cluster diameter
    contrast: float
    lesion_depth: float  # lesion distance from the chest wall as a fraction of the breast depth
    dicom: bool


def _write_patient(out: Path, index: int, params: dict) -> list[dict]:
    rng = np.random.default_rng([params["seed"], index])
    lo, hi = params["lesion_contrast"]
    preset = MAMMO_PRESETS[params.get("difficulty", "easy")]
    positive = rng.random() < params["positive_fraction"]
    is_mass = rng.random() < 0.75
    patient = _Patient(
        density=float(rng.uniform(0.1, 0.6)),
        depth=float(rng.uniform(0.5, 0.78)),
        half_height=float(rng.uniform(0.32, 0.44)),
        affected=str(rng.choice(["L", "R"])) if positive else None,
        lesion_type=("mass" if is_mass else "calcification") if positive else "",
        lesion_mm=float(rng.uniform(8, 25) if is_mass else rng.uniform(8, 15)) * preset.lesion_size,
        contrast=float(rng.uniform(lo, hi)) * preset.lesion_contrast,
        lesion_depth=float(rng.uniform(0.3, 0.7)),
        dicom=bool(rng.random() < 0.5),
    )
    dicom_style = {
        "bits": int(rng.choice([12, 14, 16])),
        "mono1": bool(rng.random() < 0.5),
        "rescale": bool(rng.random() < 0.4),
        "window": bool(rng.random() < 0.5),
    }
    patient_id = f"{params.get('patient_prefix', 'DEMO')}{index + 1:04d}"
    exam_id = f"{patient_id}_E1"
    spacing = params["pixel_spacing_mm"]
    (out / "images" / patient_id).mkdir(parents=True, exist_ok=True)
    rows = []
    for lat_code, lat in enumerate(("L", "R")):
        for view_code, view in enumerate(("CC", "MLO")):
            img_rng = np.random.default_rng([params["seed"], index, lat_code, view_code])
            has_lesion = patient.affected == lat
            pixels, lesion = _render(img_rng, params["image_size"], spacing, patient, view, has_lesion, preset)
            if lat == "R":
                pixels, lesion = pixels[:, ::-1].copy(), lesion[:, ::-1].copy()
            if img_rng.random() < 0.5:
                _burn_marker(pixels, lat if img_rng.random() < 0.5 else f"{lat}{view}", chest_wall_left=lat == "L")
            stem = f"{patient_id}_{lat}_{view}"
            if patient.dicom:
                rel = f"images/{patient_id}/{stem}.dcm"
                uids = [params["seed"], patient_id]
                write_dicom(out / rel, pixels, spacing, lat, view, patient_id, uids, **dicom_style)
            else:
                rel = f"images/{patient_id}/{stem}.png"
                write_png16(out / rel, pixels, dicom_style["bits"])
            mask_rel, boxes = "", []
            if has_lesion:
                mask_rel = f"masks/{patient_id}/{stem}_mask.png"
                (out / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                write_bytes(out / mask_rel, png_bytes(lesion.astype(np.uint8) * 255))
                ys, xs = np.nonzero(lesion)
                boxes = [[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]] if len(xs) else []
            rows.append(
                {
                    "image_path": rel,
                    "label": "positive" if has_lesion else "negative",
                    "patient_id": patient_id,
                    "exam_id": exam_id,
                    "laterality": lat,
                    "view": view,
                    "mask_path": mask_rel,
                    "boxes": json.dumps(boxes),
                    "lesion_type": patient.lesion_type if has_lesion else "",
                    "pixel_spacing_mm": spacing,
                }
            )
    return rows


# --------------------------------------------------------------------------- rendering (chest wall on the left)


def _power_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum 1/f^beta (mammographic texture has beta ~ 3)."""
    spectrum = fft.rfft2(rng.standard_normal(shape, dtype=np.float32))
    spectrum *= _spectral_filter(shape, beta)
    noise = fft.irfft2(spectrum, s=shape)
    noise -= noise.mean()
    noise /= noise.std() + 1e-8
    return noise


@functools.lru_cache(maxsize=8)
def _spectral_filter(shape: tuple[int, int], beta: float) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    filt = f ** np.float32(-beta / 2)
    filt[0, 0] = 0
    return filt


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _render(
    rng: np.random.Generator, size: list[int], spacing: float, p: _Patient, view: str, has_lesion: bool,
    preset: MammoPreset = MAMMO_PRESETS["easy"],
) -> tuple[np.ndarray, np.ndarray]:
    """One view in [0, 1] (brighter = denser) and its lesion mask, chest wall on the left."""
    h, w = size
    yy, xx = _grid(h, w)
    depth = p.depth * w * rng.uniform(0.95, 1.05)
    if view == "CC":
        cy, half = h * rng.uniform(0.46, 0.54), p.half_height * h
    else:  # MLO: taller, reaching up into the axilla
        cy, half = h * rng.uniform(0.5, 0.56), min(0.56, p.half_height * 1.3) * h
    r2 = np.square((yy - np.float32(cy)) / np.float32(half)) + np.square(xx / np.float32(depth))
    breast = r2 < 1.0
    pectoral = np.zeros_like(breast)
    if view == "MLO":
        px, py = w * rng.uniform(0.2, 0.32), h * rng.uniform(0.35, 0.55)
        pectoral = xx / px + yy / py < 1.0
        breast |= pectoral

    # Smooth parts (thickness falloff, fibroglandular clouds) at quarter resolution, then upsampled.
    r2_small = cv2.resize(r2, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    root_thick = np.sqrt(np.sqrt(np.clip(1.0 - r2_small, 0.0, 1.0)))  # sqrt of the compressed thickness
    clouds = _power_noise(rng, (h // 4, w // 4), 3.0) - np.float32(0.6) * r2_small  # denser centrally
    cut = np.quantile(clouds[r2_small < 1.0], 1.0 - p.density)  # about `density` of the breast is dense
    dense = 1.0 / (1.0 + np.exp(np.float32(-3.0) * (clouds - np.float32(cut))))
    smooth = cv2.resize(root_thick * (0.26 + preset.cloud_amplitude * dense), (w, h), interpolation=cv2.INTER_LINEAR)
    fine = _power_noise(rng, (h, w), 2.0)
    image = 0.3 + smooth + preset.fine_texture * fine
    if view == "MLO":
        edge = cv2.GaussianBlur(pectoral[::4, ::4].astype(np.float32), (0, 0), 0.75)
        edge = cv2.resize(edge, (w, h), interpolation=cv2.INTER_LINEAR)
        image = image * (1 - edge) + (0.78 + 0.03 * fine) * edge
    inside = cv2.erode(breast.view(np.uint8), np.ones((7, 7), np.uint8), borderType=cv2.BORDER_REPLICATE)
    image += np.float32(0.06) * (breast & ~inside.view(bool))  # skin line
    air = 0.03 + 0.006 * rng.standard_normal((h, w), dtype=np.float32)
    image = np.where(breast, image, air)

    lesion = np.zeros((h, w), bool)
    if has_lesion:
        inner = breast & ~pectoral
        # The breast's intensity range: from the air around it (0.03) to its brightest tissue.
        span = float(np.percentile(image[::4, ::4][inner[::4, ::4]], 99)) - 0.03
        cx = p.lesion_depth * depth * rng.uniform(0.9, 1.1)
        half_chord = half * np.sqrt(max(0.0, 1.0 - (cx / depth) ** 2))
        cy_l = cy + rng.uniform(-0.6, 0.6) * half_chord
        if view == "MLO":  # keep it below the pectoral muscle
            cy_l = max(cy_l, py * (1 - cx / px) + p.lesion_mm / spacing if cx < px else cy_l)
        add, lesion = (_mass if p.lesion_type == "mass" else _calcifications)(rng, (h, w), (cy_l, cx), p, spacing)
        image = image + p.contrast * span * add * breast
        lesion &= breast
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.7)
    return np.clip(image, 0.0, 1.0), lesion


def _mass(rng, shape, centre, p: _Patient, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Irregular dense core with radiating spicules; the mask is the core."""
    h, w = shape
    radius = p.lesion_mm / 2 / spacing
    reach = int(np.ceil(radius * 2.4)) + 2  # spicules end within 2.2 radii
    y0, y1 = max(0, int(centre[0]) - reach), min(h, int(centre[0]) + reach)
    x0, x1 = max(0, int(centre[1]) - reach), min(w, int(centre[1]) + reach)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    rho, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
    edge = np.full_like(theta, radius)
    for k in range(2, 6):
        edge += radius * rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    core = np.clip(1.0 - (rho / edge) ** 2, 0.0, 1.0) ** 0.25
    spicules = np.zeros((h, w), np.float32)
    for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(8, 20))):
        length = radius * rng.uniform(1.3, 2.2)
        end = (int(centre[1] + length * np.cos(angle)), int(centre[0] + length * np.sin(angle)))
        cv2.line(spicules, (int(centre[1]), int(centre[0])), end, 1.0, max(1, round(0.4 / spacing)), cv2.LINE_AA)
    local = cv2.GaussianBlur(spicules[y0:y1, x0:x1], (0, 0), 0.8)
    add, mask = np.zeros((h, w), np.float32), np.zeros((h, w), bool)
    add[y0:y1, x0:x1] = np.maximum(core, 0.5 * local / max(float(local.max()), 1e-6))
    mask[y0:y1, x0:x1] = rho < edge
    return add, mask


def _calcifications(rng, shape, centre, p: _Patient, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """5-20 bright specks of 0.5-1 mm in a cluster; the mask is their convex hull plus a margin."""
    h, w = shape
    radius = p.lesion_mm / 2 / spacing
    n = int(rng.integers(5, 21))
    r = radius * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(0, 2 * np.pi, n)
    pts = np.stack([centre[1] + r * np.cos(a), centre[0] + r * np.sin(a)], axis=1)
    specks = np.zeros((h, w), np.float32)
    for (x, y), d_mm in zip(pts, rng.uniform(0.5, 1.0, n), strict=True):
        cv2.circle(specks, (int(round(x)), int(round(y))), max(1, int(round(d_mm / 2 / spacing))), 1.0, -1, cv2.LINE_AA)
    specks = cv2.GaussianBlur(specks, (0, 0), 0.6)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
    margin = max(1, int(round(1.0 / spacing)))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    return 2.5 * specks, mask.astype(bool)  # specks are tiny: 2.5x the mass contrast keeps them visible


def _burn_marker(image: np.ndarray, text: str, chest_wall_left: bool) -> None:
    """A bright letter in a corner away from the breast (in place); skipped where it would overlap."""
    h, w = image.shape
    scale = h / 500
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    margin = h // 40
    x = w - margin - tw if chest_wall_left else margin
    for y in (margin + th, h - margin - base):
        pad = margin // 2
        box = image[max(0, y - th - pad) : y + base + pad, max(0, x - pad) : x + tw + pad]
        if box.size and box.max() < 0.1:
            canvas = np.zeros((h, w), np.uint8)  # putText draws on 8-bit images only
            cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 2, cv2.LINE_AA)
            np.maximum(image, canvas.astype(np.float32) * (0.97 / 255), out=image)
            return


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medconv demo-data mammo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (manifest.csv, images/, masks/)")
    parser.add_argument("--n-patients", type=int, default=120, help="patients, 4 images each (default 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, nargs=2, default=(1024, 800), metavar=("H", "W"))
    parser.add_argument("--pixel-spacing-mm", type=float, default=0.2)
    parser.add_argument("--lesion-contrast", type=float, nargs=2, default=(0.15, 0.4), metavar=("LO", "HI"),
                        help="lesion contrast range, as a fraction of the breast's intensity range")  # fmt: skip
    parser.add_argument("--positive-fraction", type=float, default=0.4)
    parser.add_argument("--difficulty", choices=tuple(MAMMO_PRESETS), default="easy",
                        help="easy: the standard set; hard: smaller, fainter lesions in busier texture (no subtle: a slide preset)")
    parser.add_argument("--patient-prefix", default="DEMO", help="patient ids are <prefix>0001, ...: another prefix and "
                        "seed simulate an external site (e.g. EXT)")
    args = parser.parse_args(argv)
    manifest = generate_demo_mammo(
        args.out, args.n_patients, args.seed, tuple(args.image_size), args.pixel_spacing_mm,
        tuple(args.lesion_contrast), args.positive_fraction, args.patient_prefix, args.difficulty,
    )  # fmt: skip
    print(manifest)
    return 0
