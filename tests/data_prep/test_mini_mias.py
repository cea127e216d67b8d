"""mini-MIAS adapter on a fake folder: an Info.txt in the published format and small binary PGMs beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medconv.data_prep import mini_mias
from medconv.errors import InputFileError
from medconv.io.mammo import read_mammogram

H, W = 48, 64  # not square, so that a swapped x/y would show
MANIFEST_COLUMNS = ["image_path", "label", "patient_id", "exam_id", "laterality", "view", "mask_path", "boxes"]
HEADER = """              MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY
3) When calcifications are present, centre locations and radii
   apply to clusters rather than individual calcifications.
   Coordinate system origin is the bottom-left corner.
=================================================================

"""
ROWS = [
    "mdb001 G CIRC B 30 10 4",  # the disc test: centre x=30, y=10 from the bottom
    "mdb002 G MISC B 10 40 3",  # one image with a benign and a malignant finding
    "mdb002 G SPIC M 50 20 5",
    "mdb003 D NORM ",  # trailing space, as in the real file
    "mdb004 D CALC M *NOTE 3* ",  # distributed calcifications: no coordinates
    "mdb005 F NORM",
    "mdb005 F NORM",  # an identical repeat
    "mdb006 F ARCH B 40 30 3",
]


def pgm(path: Path, image: np.ndarray) -> None:
    path.write_bytes(f"P5\n{image.shape[1]} {image.shape[0]}\n255\n".encode() + image.astype(np.uint8).tobytes())


def disc(cx: int, row: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - row) ** 2 <= radius**2


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "mias"
    root.mkdir()
    (root / "Info.txt").write_text(HEADER + "\n".join(ROWS) + "\n\n" + "=" * 65 + "\n")
    for n in range(1, 7):
        image = np.full((H, W), 20, np.uint8)
        if n == 1:
            image[disc(30, H - 1 - 10, 4)] = 250  # where the bottom-left origin puts it
        pgm(root / f"mdb{n:03d}.pgm", image)
    return root


def _read(manifest: Path) -> pd.DataFrame:
    frame = pd.read_csv(manifest, keep_default_na=False)
    return frame.set_index(frame["image_path"].map(lambda p: Path(p).name))


def test_rows_labels_patients_and_columns(folder: Path, tmp_path: Path, capsys) -> None:
    assert mini_mias.main([str(folder), "--out", str(tmp_path / "m.csv")]) == 0
    frame = _read(tmp_path / "m.csv")
    assert list(frame.columns) == MANIFEST_COLUMNS + ["pixel_spacing_mm", "density", "abnormality", "severity"]
    assert list(frame["image_path"]) == [f"mias/mdb{n:03d}.pgm" for n in range(1, 7)]  # relative to the manifest
    assert list(frame["label"]) == ["positive", "positive", "negative", "positive", "negative", "positive"]
    assert list(frame["patient_id"]) == ["mias001"] * 2 + ["mias002"] * 2 + ["mias003"] * 2
    assert (frame["exam_id"] == frame["patient_id"]).all() and (frame["view"] == "MLO").all()
    assert list(frame["laterality"]) == ["R", "L"] * 3  # odd numbers right, even left
    assert list(frame["density"]) == ["G", "G", "D", "D", "F", "F"] and (frame["pixel_spacing_mm"] == 0.2).all()
    two = frame.loc["mdb002.pgm"]
    assert two["abnormality"] == "MISC;SPIC" and two["severity"] == "B;M" and len(json.loads(two["boxes"])) == 2
    assert frame.loc["mdb004.pgm", "boxes"] == "[]" and frame.loc["mdb003.pgm", "severity"] == ""
    out, err = capsys.readouterr()
    assert "6 images of 3 patients (target abnormal: 4 positive, 2 negative)" in out
    assert "1 findings without coordinates (image label only, no box): mdb004 CALC M" in out
    assert "7 findings" in out  # the repeated mdb005 row counted once
    assert "repeats an earlier row of mdb005; dropped" in err and "mdb004: ignored '*NOTE 3*'" in err


def test_malignant_target_keeps_only_malignant_boxes(folder: Path, tmp_path: Path) -> None:
    manifest, counts = mini_mias.build_manifest(folder, tmp_path / "out", target="malignant")
    assert manifest == tmp_path / "out" / "manifest.csv"  # a folder gets manifest.csv, like the other adapters
    frame = _read(manifest)
    assert list(frame["label"]) == ["negative", "positive", "negative", "positive", "negative", "negative"]
    assert json.loads(frame.loc["mdb002.pgm", "boxes"]) == [[45, 22, 56, 33]]  # the SPIC M finding only
    assert frame.loc["mdb001.pgm", "boxes"] == "[]"  # benign: no box under this target
    assert counts["positive"] == 2 and counts["boxes"] == 1


def test_box_covers_the_disc_at_the_flipped_row(folder: Path, tmp_path: Path) -> None:
    manifest, _ = mini_mias.build_manifest(folder, tmp_path / "m.csv")
    row = _read(manifest).loc["mdb001.pgm"]
    (x0, y0, x1, y1), = json.loads(row["boxes"])
    pixels = read_mammogram(tmp_path / row["image_path"]).pixels  # medconv's reader takes the PGM
    bright = pixels > 0.5
    assert bright.sum() == disc(30, H - 1 - 10, 4).sum()
    assert bright[y0:y1, x0:x1].sum() == bright.sum()  # the whole disc is inside the box
    assert (x1 - x0, y1 - y0) == (9, 9)  # and the box is the circle's, not more
    unflipped = bright[10 - 4 : 10 + 5, x0:x1]  # y taken as a row from the top: misses the disc entirely
    assert unflipped.sum() == 0


def test_missing_images_bad_rows_and_roots_are_named(folder: Path, tmp_path: Path) -> None:
    (folder / "mdb006.pgm").unlink()
    with pytest.raises(InputFileError, match=r"(?s)1 mini-MIAS image\(s\) listed in Info.txt not found.*mdb006.pgm"):
        mini_mias.build_manifest(folder, tmp_path / "m.csv")
    _, counts = mini_mias.build_manifest(folder, tmp_path / "m.csv", allow_missing=True)
    assert counts["images"] == 5
    (folder / "Info.txt").write_text(HEADER + "mdb001 G BLOB B 1 2 3\nmdb002 X NORM\n")
    with pytest.raises(InputFileError, match=r"(?s)Info.txt: 2 row\(s\).*line 7: class 'BLOB'.*line 8: background tissue 'X'"):
        mini_mias.build_manifest(folder, tmp_path / "m.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="Info.txt not found under"):
        mini_mias.build_manifest(empty, tmp_path / "m.csv")


def test_patch_datamodule_takes_the_boxes(folder: Path, tmp_path: Path) -> None:
    from medconv.mammo.patches import MammoPatchDataModule

    manifest, _ = mini_mias.build_manifest(folder, tmp_path / "m.csv")
    table = MammoPatchDataModule(manifest=str(manifest), image_size=(32, 32), num_workers=0).load_table()
    labels = dict(zip(table["image_path"].map(lambda p: Path(p).name), table["label"], strict=True))
    # images with boxes are lesion images; normal ones background; mdb004 (a finding without a box) is left out
    assert labels == {"mdb001.pgm": "lesion", "mdb002.pgm": "lesion", "mdb003.pgm": "background",
                      "mdb005.pgm": "background", "mdb006.pgm": "lesion"}


@pytest.mark.realdata
def test_real_mini_mias_counts(tmp_path: Path) -> None:
    """$MEDCONV_MIAS: the mini-MIAS folder (Info.txt and the 322 PGMs); skipped when unset."""
    root = os.environ.get("MEDCONV_MIAS")
    if not root or not Path(root).is_dir():
        pytest.skip("set MEDCONV_MIAS to the mini-MIAS folder to check the adapter on the real files")
    _, counts = mini_mias.build_manifest(Path(root), tmp_path / "m.csv")
    assert (counts["images"], counts["patients"], counts["positive"], counts["boxes"]) == (322, 161, 115, 119)
    _, counts = mini_mias.build_manifest(Path(root), tmp_path / "m.csv", target="malignant")
    assert counts["positive"] == 52
