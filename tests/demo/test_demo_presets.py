"""Demo difficulty presets: `easy` is the original data to the bit; `hard` keeps the labels and ground truth but
weakens the signal (smaller, fainter lesions in busier texture; tumour closer to normal, more stain variation);
`subtle` (slides only) weakens it further. The calibration of `subtle` (a real fit) is in docs/data.md, not here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medconv.demo import mammo as demo_mammo
from medconv.demo.difficulty import DIFFICULTIES, MAMMO_PRESETS, WSI_PRESETS, check_difficulty, demo_root
from medconv.demo.mammo import generate_demo_mammo
from medconv.demo.wsi import generate_demo_slides, render_slide
from medconv.errors import ConfigError

SMALL = {"n_patients": 3, "seed": 1, "image_size": (256, 200), "pixel_spacing_mm": 0.8, "positive_fraction": 0.6}
EASY_MAMMO_PNG = "images/DEMO0002/DEMO0002_L_CC.png"
# `easy` is the original data because its preset holds the literals the generators used before presets existed,
# and the generators are deterministic. Checksums of the pixels themselves are not tested: they were pinned once
# (2026-11-27) and stopped matching on 2026-12-06 with nothing in medconv changed, because OpenCV 5 renders the
# slide texture differently (the slide checksum matched again under opencv-python-headless 4.14) and another
# library update moved the mammogram's; a fresh install must pass whatever versions it resolves.
EASY_MAMMO_LITERALS = {"lesion_size": 1.0, "lesion_contrast": 1.0, "cloud_amplitude": 0.1, "fine_texture": 0.012}
EASY_WSI_LITERALS = {"tumour_background": (196, 128, 186), "tumour_density": 1 / 260, "tumour_axes": ((7, 12), (8, 15)),
                     "tumour_colour": (72, 36, 112), "tumour_jitter": 22, "stain_jitter": 0.0, "stain_drift": 0.0}


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    return {d: generate_demo_mammo(root / d, difficulty=d, **SMALL).parent for d in ("easy", "hard")}


def _lesion_stats(root: Path) -> list[tuple[str, int, float]]:
    """Per positive image: (image path, lesion area in px, lesion mean minus the mean of a ring around it)."""
    from medconv.io.mammo import read_mammogram

    frame = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    stats = []
    for row in frame[frame.label == "positive"].itertuples():
        pixels = read_mammogram(root / row.image_path).pixels
        lesion = cv2.imread(str(root / row.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        ring = cv2.dilate(lesion.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~lesion
        stats.append((row.image_path, int(lesion.sum()), float(pixels[lesion].mean() - pixels[ring].mean())))
    return stats


def test_easy_mammograms_are_the_original_data(sets: dict[str, Path], tmp_path: Path) -> None:
    from dataclasses import asdict

    assert asdict(MAMMO_PRESETS["easy"]) == EASY_MAMMO_LITERALS
    again = generate_demo_mammo(tmp_path / "again", **SMALL).parent  # no difficulty given: the same as easy
    image = cv2.imread(str(sets["easy"] / EASY_MAMMO_PNG), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(image, cv2.imread(str(again / EASY_MAMMO_PNG), cv2.IMREAD_UNCHANGED))
    # Easy sets keep the parameter file (and so the caches) of sets generated before presets existed.
    assert "difficulty" not in json.loads((sets["easy"] / demo_mammo.PARAMS).read_text())


def test_hard_mammograms_keep_labels_and_masks_with_weaker_smaller_lesions(sets: dict[str, Path]) -> None:
    easy = pd.read_csv(sets["easy"] / "manifest.csv", keep_default_na=False)
    hard = pd.read_csv(sets["hard"] / "manifest.csv", keep_default_na=False)
    assert easy[["image_path", "label", "lesion_type"]].equals(hard[["image_path", "label", "lesion_type"]])
    assert (hard[hard.label == "positive"].mask_path != "").all() and (hard[hard.label == "negative"].mask_path == "").all()
    path = EASY_MAMMO_PNG
    assert _sha(cv2.imread(str(sets["hard"] / path), cv2.IMREAD_UNCHANGED)) != _sha(
        cv2.imread(str(sets["easy"] / path), cv2.IMREAD_UNCHANGED))
    easy_stats, hard_stats = _lesion_stats(sets["easy"]), _lesion_stats(sets["hard"])
    assert [s[0] for s in easy_stats] == [s[0] for s in hard_stats] and len(hard_stats) >= 4
    for (_, easy_area, easy_contrast), (_, hard_area, hard_contrast) in zip(easy_stats, hard_stats, strict=True):
        assert 0 < hard_area < easy_area  # every lesion is still there, and smaller
        assert hard_contrast < easy_contrast
    assert np.mean([s[2] for s in hard_stats]) > 0  # fainter, but still brighter than its surroundings on average


def test_hard_mammograms_are_deterministic_by_seed(sets: dict[str, Path], tmp_path: Path) -> None:
    again = generate_demo_mammo(tmp_path / "again", difficulty="hard", **SMALL).parent
    other = generate_demo_mammo(tmp_path / "other", difficulty="hard", **{**SMALL, "seed": 2}).parent
    path = EASY_MAMMO_PNG
    image = cv2.imread(str(sets["hard"] / path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(image, cv2.imread(str(again / path), cv2.IMREAD_UNCHANGED))
    assert (again / "manifest.csv").read_bytes() == (sets["hard"] / "manifest.csv").read_bytes()
    assert (other / "manifest.csv").read_bytes() != (sets["hard"] / "manifest.csv").read_bytes()


def test_hard_sets_are_reused_until_the_preset_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medconv.demo.difficulty import MammoPreset

    small = {**SMALL, "n_patients": 1}
    manifest = generate_demo_mammo(tmp_path, difficulty="hard", **small)
    before = manifest.stat().st_mtime_ns
    assert generate_demo_mammo(tmp_path, difficulty="hard", **small) == manifest
    assert manifest.stat().st_mtime_ns == before  # same parameters: returned untouched
    monkeypatch.setitem(demo_mammo.MAMMO_PRESETS, "hard", MammoPreset(lesion_contrast=0.9))
    generate_demo_mammo(tmp_path, difficulty="hard", **small)  # a retuned preset is not mistaken for the old set
    assert manifest.stat().st_mtime_ns != before
    assert json.loads((tmp_path / demo_mammo.PARAMS).read_text())["preset"]["lesion_contrast"] == 0.9


def _tissue_darkness(slide, region: np.ndarray) -> float:
    return float(255 - slide.rgb[region].mean())


def test_easy_slides_are_the_original_data() -> None:
    from dataclasses import asdict

    assert asdict(WSI_PRESETS["easy"]) == EASY_WSI_LITERALS
    slide = render_slide(np.random.default_rng([0, 1]), 512, 384, tumour=True, pen=True)
    again = render_slide(np.random.default_rng([0, 1]), 512, 384, tumour=True, pen=True, preset=WSI_PRESETS["easy"])
    assert _sha(slide.rgb) == _sha(again.rgb) and slide.tumour.any()


def test_hard_slides_keep_the_tumour_mask_but_look_closer_to_normal_with_more_stain_variation() -> None:
    gaps, colours = {}, {}
    for name, preset in WSI_PRESETS.items():
        gap, colour = [], []
        for i in range(4):
            slide = render_slide(np.random.default_rng([5, i]), 512, 384, tumour=True, pen=False, preset=preset)
            assert slide.tumour.any() and (slide.tumour <= slide.tissue).all()
            normal = slide.tissue & ~slide.tumour
            gap.append(_tissue_darkness(slide, slide.tumour) - _tissue_darkness(slide, normal))
            colour.append(slide.rgb[normal].mean(axis=0))
        gaps[name], colours[name] = np.array(gap), np.array(colour)
    assert (gaps["hard"] > 0).all()  # tumour is still darker than normal tissue on every slide: learnable
    assert gaps["hard"].mean() < 0.5 * gaps["easy"].mean()
    assert colours["hard"].std(axis=0).mean() > 1.5 * colours["easy"].std(axis=0).mean()  # stain varies between slides
    # subtle: closer to normal than hard, still darker on average, under as much stain variation as hard
    assert 0 < gaps["subtle"].mean() < 0.6 * gaps["hard"].mean()
    assert colours["subtle"].std(axis=0).mean() > 1.5 * colours["easy"].std(axis=0).mean()
    healthy = render_slide(np.random.default_rng([5, 9]), 512, 384, tumour=False, pen=False, preset=WSI_PRESETS["hard"])
    assert not healthy.tumour.any()


def test_hard_slides_are_deterministic_and_cached_apart(tmp_path: Path) -> None:
    a = generate_demo_slides(tmp_path / "a", n_slides=2, seed=3, width=512, height=384, difficulty="hard")
    b = generate_demo_slides(tmp_path / "b", n_slides=2, seed=3, width=512, height=384, difficulty="hard")
    for name in ("slides/demo_001.tif", "masks/demo_001_tumor.png", "manifest.csv"):
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    assert json.loads((a.parent / "demo_wsi_params.json").read_text())["difficulty"] == "hard"
    assert demo_root(tmp_path / "demo_wsi", "easy") == tmp_path / "demo_wsi"
    assert demo_root(tmp_path / "demo_wsi", "hard") == tmp_path / "demo_wsi_hard"
    assert demo_root(tmp_path / "demo_wsi", "subtle") == tmp_path / "demo_wsi_subtle"


def test_presets_differ_and_subtle_is_for_slides_only(tmp_path: Path) -> None:
    from medconv.demo.cli import main

    assert set(WSI_PRESETS) == set(DIFFICULTIES) and set(MAMMO_PRESETS) == {"easy", "hard"}
    assert len(set(WSI_PRESETS.values())) == len(WSI_PRESETS)  # easy, hard and subtle are three different sets
    subtle, hard, easy = WSI_PRESETS["subtle"], WSI_PRESETS["hard"], WSI_PRESETS["easy"]
    assert 1 / 1400 < subtle.tumour_density < hard.tumour_density < easy.tumour_density  # normal tissue: 1/1400
    assert check_difficulty("subtle") == check_difficulty("subtle", WSI_PRESETS) == "subtle"
    with pytest.raises(ConfigError, match="subtle is a slide preset"):
        check_difficulty("subtle", MAMMO_PRESETS)
    with pytest.raises(ConfigError, match="subtle is a slide preset"):
        generate_demo_mammo(tmp_path / "mammo", difficulty="subtle", **SMALL)
    with pytest.raises(SystemExit) as usage:  # not one of the mammogram CLI's choices
        main(["mammo", "--out", str(tmp_path / "cli_mammo"), "--difficulty", "subtle"])
    assert usage.value.code == 2
    assert main(["wsi", "--out", str(tmp_path / "cli_wsi"), "--n-slides", "2", "--width", "256", "--height", "256",
                 "--difficulty", "subtle"]) == 0
    params = json.loads((tmp_path / "cli_wsi" / "demo_wsi_params.json").read_text())
    assert params["difficulty"] == "subtle" and params["preset"]["tumour_density"] == subtle.tumour_density


def test_datamodules_and_cli_take_the_difficulty(tmp_path: Path) -> None:
    from medconv.demo import MammoDemo, SlideDemo
    from medconv.demo.cli import main
    from medconv.mammo import MammoDataModule

    demo = MammoDemo(root=str(tmp_path / "demo_mammo"), n_patients=2, image_size=(128, 100), difficulty="hard")
    dm = MammoDataModule(demo=demo)
    assert dm.manifest_path() == tmp_path / "demo_mammo_hard" / "manifest.csv"
    assert json.loads((tmp_path / "demo_mammo_hard" / demo_mammo.PARAMS).read_text())["difficulty"] == "hard"
    assert not (tmp_path / "demo_mammo").exists()  # the easy set's folder is left alone
    with pytest.raises(ConfigError, match="easy"):
        SlideDemo(difficulty="medium")
    with pytest.raises(ConfigError, match="subtle is a slide preset"):  # refused when configured, not when generating
        MammoDemo(difficulty="subtle")
    assert main(["mammo", "--out", str(tmp_path / "cli"), "--n-patients", "1", "--image-size", "128", "100",
                 "--difficulty", "hard"]) == 0
    assert json.loads((tmp_path / "cli" / demo_mammo.PARAMS).read_text())["difficulty"] == "hard"
