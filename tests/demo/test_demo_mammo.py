"""Demo mammograms: deterministic, readable, honest (lesions inside the breast and visible), idempotent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medconv.demo import mammo as demo_mammo
from medconv.demo import mammo_files
from medconv.demo.mammo import generate_demo_mammo
from medconv.io.mammo import read_mammogram
from medconv.mammo.prep import breast_mask

SMALL = {"n_patients": 4, "seed": 1, "image_size": (256, 200), "pixel_spacing_mm": 0.8}
REQUIRED = ["image_path", "label", "patient_id", "exam_id", "laterality", "view", "mask_path", "boxes"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_mammo(tmp_path_factory.mktemp("a"), positive_fraction=0.6, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes(demo: Path, tmp_path: Path) -> None:
    again = generate_demo_mammo(tmp_path / "b", positive_fraction=0.6, **SMALL)
    assert _files(demo.parent) == _files(again.parent)
    other = generate_demo_mammo(tmp_path / "c", positive_fraction=0.6, **{**SMALL, "seed": 2})
    assert _files(other.parent)["manifest.csv"] != _files(demo.parent)["manifest.csv"]


def test_manifest_columns_and_exam_structure(demo: Path) -> None:
    frame = pd.read_csv(demo, keep_default_na=False)
    assert list(frame.columns[: len(REQUIRED)]) == REQUIRED
    assert len(frame) == 4 * SMALL["n_patients"]
    for _, exam in frame.groupby("exam_id"):
        assert sorted(zip(exam.laterality, exam.view, strict=True)) == [
            ("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"),
        ]  # fmt: skip
        positive = exam[exam.label == "positive"]
        assert len(positive) in (0, 2) and positive.laterality.nunique() <= 1  # one breast, both views
    assert set(frame.label) == {"negative", "positive"}
    assert (frame[frame.label == "negative"].mask_path == "").all()
    assert (frame[frame.label == "negative"].boxes == "[]").all()
    assert {Path(p).suffix for p in frame.image_path} == {".dcm", ".png"}


def test_images_are_readable_with_matching_metadata(demo: Path) -> None:
    frame = pd.read_csv(demo, keep_default_na=False)
    for row in frame.itertuples():
        m = read_mammogram(demo.parent / row.image_path)
        assert m.pixels.shape == SMALL["image_size"]
        assert 0.0 <= m.pixels.min() < 0.1 and m.pixels.max() > 0.4  # dark background, bright breast
        if row.image_path.endswith(".dcm"):
            assert (m.laterality, m.view) == (row.laterality, row.view)
            assert m.pixel_spacing_mm == (0.8, 0.8) and m.bits_stored in (12, 14, 16)
        # Breast tissue, not the background, fills the chest-wall column whatever the DICOM encoding.
        chest_wall = m.pixels[:, 0] if row.laterality == "L" else m.pixels[:, -1]
        assert np.median(chest_wall) > 0.25


def test_lesions_lie_inside_the_breast_and_stand_out(demo: Path) -> None:
    frame = pd.read_csv(demo, keep_default_na=False)
    positives = frame[frame.label == "positive"]
    assert len(positives) >= 2
    for row in positives.itertuples():
        pixels = read_mammogram(demo.parent / row.image_path).pixels
        lesion = cv2.imread(str(demo.parent / row.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        assert lesion.shape == pixels.shape and lesion.any()
        assert (lesion & breast_mask(pixels)).sum() >= 0.95 * lesion.sum()
        ys, xs = np.nonzero(lesion)
        assert json.loads(row.boxes) == [[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]]
        if row.lesion_type == "mass":
            ring = cv2.dilate(lesion.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~lesion
            assert pixels[lesion].mean() > pixels[ring].mean() + 0.02, row.image_path


def test_rerun_with_same_parameters_is_a_no_op(tmp_path: Path) -> None:
    params = {**SMALL, "n_patients": 1}
    manifest = generate_demo_mammo(tmp_path, **params)
    os.utime(manifest, (1, 1))
    assert generate_demo_mammo(tmp_path, **params) == manifest and manifest.stat().st_mtime == 1
    generate_demo_mammo(tmp_path, **{**params, "seed": 5})  # new parameters: regenerated
    assert manifest.stat().st_mtime != 1
    assert not list(tmp_path.rglob(".*.tmp"))


def test_cli_writes_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = demo_mammo.main(["--out", str(tmp_path), "--n-patients", "1", "--image-size", "128", "100"])
    assert code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "manifest.csv")
    assert len(pd.read_csv(tmp_path / "manifest.csv")) == 4


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize(
    "mono1, rescale, window", [(False, False, False), (True, False, True), (False, True, True), (True, True, False)]
)
def test_every_dicom_encoding_reads_back_the_rendering(tmp_path: Path, bits, mono1, rescale, window) -> None:
    pixels = np.linspace(0.0, 1.0, 40 * 30, dtype=np.float32).reshape(40, 30)
    path = tmp_path / "x.dcm"
    style = {"bits": bits, "mono1": mono1, "rescale": rescale, "window": window}
    mammo_files.write_dicom(path, pixels, 0.5, "L", "CC", "P1", [0], **style)
    m = read_mammogram(path)
    np.testing.assert_allclose(m.pixels, pixels, atol=3 / 2**bits)  # quantisation (and window) steps
    assert (m.laterality, m.view, m.bits_stored, m.pixel_spacing_mm) == ("L", "CC", bits, (0.5, 0.5))
    png = tmp_path / "x.png"
    mammo_files.write_png16(png, pixels, bits)
    np.testing.assert_allclose(read_mammogram(png).pixels, pixels, atol=1 / 2**bits)
