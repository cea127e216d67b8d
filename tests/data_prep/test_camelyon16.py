"""The CAMELYON16 adapter on a small fake tree: labels, splits by patient, annotation paths, readable manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medconv.data.manifest import read_manifest
from medconv.data_prep import camelyon16
from medconv.io.annotations import read_annotations, tumour_region
from medconv.io.tiff_writer import write_pyramid_tiff

XML = """<?xml version="1.0"?><ASAP_Annotations><Annotations>
<Annotation Name="A0" Type="Polygon" PartOfGroup="Tumor"><Coordinates>
<Coordinate Order="0" X="10" Y="10"/><Coordinate Order="1" X="100" Y="10"/><Coordinate Order="2" X="100" Y="100"/>
<Coordinate Order="3" X="10" Y="100"/></Coordinates></Annotation>
</Annotations><AnnotationGroups/></ASAP_Annotations>"""


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "CAMELYON16"
    rgb = np.full((64, 64, 3), 200, np.uint8)
    for folder, names in {
        "training/normal": [f"normal_{i:03d}" for i in range(1, 6)],
        "training/tumor": [f"tumor_{i:03d}" for i in range(1, 6)],
        "testing/images": ["test_001", "test_002", "test_003"],
    }.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            write_pyramid_tiff(root / folder / f"{name}.tif", rgb, mpp=0.243, tile=16)
    (root / "training/lesion_annotations").mkdir()
    for i in range(1, 5):  # tumor_005 has no annotation
        (root / f"training/lesion_annotations/tumor_{i:03d}.xml").write_text(XML)
    (root / "testing/lesion_annotations").mkdir()
    (root / "testing/lesion_annotations/test_001.xml").write_text(XML)
    (root / "testing/reference.csv").write_text("test_001,Tumor,Macro,Primary\ntest_002,Normal\ntest_003,Normal,,\n")
    return root


def test_manifest_from_fake_tree(tree, tmp_path, capsys):
    out = tmp_path / "manifests" / "c16.csv"
    assert camelyon16.main([str(tree), "--out", str(out), "--val-fraction", "0.4", "--seed", "1"]) == 0
    assert "tumor_005.tif: tumour slide without" in capsys.readouterr().err
    raw = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert raw["slide_path"].str.startswith("../CAMELYON16/").all()  # relative to the manifest's folder
    table = read_manifest(out, ["slide_path", "label", "patient_id"], path_columns=["slide_path"],
                          optional_path_columns=["annotation_path"], classes=["normal", "tumor"])
    by = table.set_index("patient_id")
    assert len(table) == 13 and by.loc["normal_001", "label"] == "normal" and by.loc["tumor_003", "label"] == "tumor"
    assert by.loc["test_001", "label"] == "tumor" and by.loc["test_003", "label"] == "normal"
    assert set(by.loc[["test_001", "test_002", "test_003"], "split"]) == {"test"}
    training = table[~table["patient_id"].str.startswith("test")]
    for label in ("normal", "tumor"):  # stratified: 2 of 5 per class held out
        assert (training[training["label"] == label]["split"] == "val").sum() == 2
    assert by.loc["tumor_005", "annotation_path"] == "" and by.loc["normal_002", "annotation_path"] == ""
    region = tumour_region(read_annotations(by.loc["tumor_001", "annotation_path"]))
    assert region.area == pytest.approx(90 * 90)
    assert by.loc["test_001", "annotation_path"].endswith("testing/lesion_annotations/test_001.xml")
    # the same seed gives the same split
    out2 = tmp_path / "again.csv"
    camelyon16.main([str(tree), "--out", str(out2), "--val-fraction", "0.4", "--seed", "1"])
    assert pd.read_csv(out2)["split"].tolist() == raw["split"].tolist()


def test_layout_problems_are_clear(tree, tmp_path, capsys):
    (tree / "testing/reference.csv").write_text("test_001,Tumor\n")
    assert camelyon16.main([str(tree), "--out", str(tmp_path / "m.csv")]) == 2
    assert "no label for 2 test slide(s): test_002, test_003" in capsys.readouterr().err
    assert camelyon16.main([str(tmp_path / "empty"), "--out", str(tmp_path / "m.csv")]) == 2
    assert "training/normal/*.tif" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()
