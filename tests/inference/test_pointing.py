"""The pointing game's pieces on hand-made maps: lesion shapes, hit and chance, the patient-bootstrap interval, and
the whole table from a `medconv infer`-shaped folder with a boxes manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medconv.errors import InputFileError
from medconv.inference.pointing import hit_rate, lesion_mask, point, pointing_table


def test_an_ellipse_is_the_circle_inscribed_in_its_box() -> None:
    box = lesion_mask([[10, 20, 31, 41]], (64, 64), "box")
    disc = lesion_mask([[10, 20, 31, 41]], (64, 64), "ellipse")  # centre (20, 30), radius 10
    assert box.sum() == 21 * 21 and box[20, 10] and box[40, 30]
    assert disc[30, 20] and disc[20, 20] and disc[30, 10] and not disc[20, 10] and not disc[40, 30]
    # the pixels within 10 px of the centre, edge included: about pi x 10.5^2
    assert abs(disc.sum() - np.pi * 10.5 ** 2) < 0.05 * np.pi * 10.5 ** 2 and (disc <= box).all()


def test_hit_chance_and_tolerance() -> None:
    lesion = np.zeros((20, 20), bool)
    lesion[5:7, 5:7] = True
    breast = np.zeros((20, 20), bool)
    breast[:, :10] = True  # 200 px of breast
    saliency = np.zeros((20, 20), np.float32)
    saliency[6, 6] = 1.0
    assert point(saliency, lesion, breast) == (True, 4 / 200)
    saliency[6, 6], saliency[6, 9] = 0.0, 1.0  # 3 px to the right of the lesion
    assert point(saliency, lesion, breast)[0] is False
    hit, chance = point(saliency, lesion, breast, tolerance_px=3)
    assert hit and chance > 4 / 200


def test_hit_rate_resamples_patients() -> None:
    # patient a: 2 hits, patient b: 2 misses, c and d: one hit each
    table = pd.DataFrame({"patient_id": ["a", "a", "b", "b", "c", "d"], "hit": [1, 1, 0, 0, 1, 1], "chance": [0.1] * 6})
    summary = hit_rate(table, n_boot=500)
    assert summary["hit_rate"] == pytest.approx(4 / 6) and summary["patients"] == 4 and summary["resampled"] == "patients"
    assert 0.0 <= summary["ci_low"] < 4 / 6 < summary["ci_high"] <= 1.0
    # the drawn rates only take values that whole patients allow: a never split from its second image
    assert hit_rate(table.assign(hit=1), n_boot=100)["ci_low"] == 1.0


def test_pointing_table_reads_boxes_from_the_manifest(tmp_path: Path) -> None:
    image = np.zeros((80, 60), np.uint8)
    image[:, :40] = 120  # the breast: left two thirds
    for name in ("a", "b", "c"):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    boxes = {"a": [[10, 10, 21, 21]], "b": [[10, 50, 21, 61]], "c": []}
    pd.DataFrame({"image_path": [f"{n}.png" for n in boxes], "patient_id": ["p1", "p1", "p2"],
                  "label": ["positive", "positive", "negative"],
                  "boxes": [json.dumps(b) for b in boxes.values()]}).to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "infer"
    (out / "saliency").mkdir(parents=True)
    rows = []
    for name, peak in (("a", (15, 15)), ("b", (15, 15)), ("c", (5, 5))):  # a: on its lesion; b: 40 px away
        saliency = np.zeros((80, 60), np.float16)
        saliency[peak] = 1
        np.save(out / "saliency" / f"{name}.npy", saliency)
        rows.append({"image_id": name, "image_path": str(tmp_path / f"{name}.png"), "status": "ok",
                     "saliency_map": f"saliency/{name}.npy"})
    pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
    table = pointing_table(out, tmp_path / "manifest.csv")
    assert table["image_id"].tolist() == ["a", "b"]  # c has no lesion
    assert table["hit"].tolist() == [True, False] and table["patient_id"].tolist() == ["p1", "p1"]
    assert table["on_lesion"].iloc[0] > table["rest_of_breast"].iloc[0]
    with pytest.raises(InputFileError, match="predictions.csv"):
        pointing_table(tmp_path / "nowhere", tmp_path / "manifest.csv")
    # the same folder through `medconv evaluate-heatmaps`, which tells a mammogram output by its saliency maps
    from medconv.inference.quality import main

    assert main([str(out), "--masks", str(tmp_path / "manifest.csv"), "--bootstrap", "50"]) == 0
    report = json.loads((out / "pointing.json").read_text())
    assert report["n"] == 2 and report["hits"] == 1 and report["lesion_shape"] == "box"
    assert main([str(out), "--masks", str(tmp_path / "nowhere.csv")]) == 2
