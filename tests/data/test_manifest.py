from pathlib import Path

import pytest

from medconv.data.manifest import read_manifest
from medconv.errors import InputFileError, ManifestError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    table = read_manifest(_write(tmp_path, "image_path,label,patient_id\na.png,neg,p1\n"), ["image_path", "label", "patient_id"], ["image_path"])
    assert table.loc[0, "image_path"] == str(tmp_path / "a.png")


def test_every_problem_reported_at_once(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    text = (
        "image_path,label,patient_id,split\n"
        "a.png,neg,p1,train\n"
        "missing.png,neg,p2,train\n"
        "a.png,cancer,p3,train\n"
        "a.png,pos,p1,val\n"
        "a.png,pos,,test\n"
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(_write(tmp_path, text), ["image_path", "label", "patient_id"], ["image_path"], classes=["neg", "pos"])
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "missing.png" in message and "does not exist" in message
    assert "'cancer'" in message and "not one of the configured classes" in message
    assert "'p1' appears in several splits" in message
    assert "empty patient_id" in message
    assert "row 6" in message


def test_missing_columns_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(_write(tmp_path, "path,label\nx,y\n"), ["image_path", "label", "patient_id"])
    with pytest.raises(InputFileError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv", ["image_path"])
