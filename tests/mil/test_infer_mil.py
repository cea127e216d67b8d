"""`medconv infer` with a MIL checkpoint, end to end on tiny demo slides: `medconv embed` (random test_resnet, 64 px
tiles), a tiny ABMIL fit, then inference from a features folder and with the slides embedded on the fly: h5 / PNG /
GeoJSON / summary.csv, the relative attention map, reruns skip, and clear errors for foreign features."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from medconv.inference.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
N_SLIDES = 6
EMBED = ["--tile-size", "64", "--target-mpp", "1.0", "--num-workers", "0", "--batch-size", "32"]


@pytest.fixture(scope="module")
def mil_run(tmp_path_factory, repo_root) -> dict[str, Path]:
    """Demo slides, their features (`medconv embed`), and a tiny ABMIL run trained on them."""
    from medconv.demo.wsi import generate_demo_slides
    from medconv.embedding.cli import main as embed
    from medconv.lightning_cli import run_lightning

    root = tmp_path_factory.mktemp("mil_infer")
    demo = generate_demo_slides(root / "demo", n_slides=N_SLIDES, seed=3, width=1024, height=768)
    assert embed(["test_resnet", str(root / "demo" / "slides"), "--out", str(root / "features"), *EMBED]) == 0
    manifest = root / "mil.csv"
    pd.read_csv(demo)[["slide_path", "label", "patient_id"]].assign(
        slide_path=lambda t: [str(root / "demo" / p) for p in t["slide_path"]]).to_csv(manifest, index=False)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli = run_lightning(["fit", "--config", str(repo_root / "configs" / "wsi_abmil.yaml"), "--config",
                             str(repo_root / "configs" / "tests" / "tiny_mil.yaml"), "--data.init_args.manifest", str(manifest),
                             "--data.init_args.features_dir", str(root / "features"), "--trainer.max_epochs", "4"])
        run = (root / cli.trainer.log_dir).resolve()
    finally:
        os.chdir(cwd)
    return {"root": root, "run": run, "slides": root / "demo" / "slides", "features": root / "features",
            "masks": root / "demo" / "manifest.csv"}


@pytest.fixture(scope="module")
def from_features(mil_run) -> tuple[int, Path]:
    out = mil_run["root"] / "out_features"
    code = main([str(mil_run["run"]), str(mil_run["slides"]), "--out", str(out), "--features-dir", str(mil_run["features"]),
                 "--num-workers", "0", "--masks", str(mil_run["masks"])])
    return code, out


def test_outputs_hold_slide_probabilities_and_relative_attention(mil_run, from_features):
    from medconv.inference.slide_outputs import read_scores
    from medconv.runs import load_run
    from medconv.tiling.feature_store import read_features

    code, out = from_features
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == N_SLIDES and (summary["status"] == "ok").all()
    assert set(summary["predicted_class"]) <= {"normal", "tumor"} and summary["score"].between(0, 1).all()
    assert np.allclose(summary["score_normal"] + summary["score_tumor"], 1, atol=1e-5)
    loaded = load_run(mil_run["run"])
    assert loaded.classes == ["normal", "tumor"] and loaded.feature_encoder["name"] == "test_resnet"
    for row in summary.to_dict("records"):
        name = row["slide"]
        bag = read_features(mil_run["features"] / f"{name}.h5")
        assert row["n_tiles"] == len(bag.features) > 5
        coords, scores, coords_attrs, attrs = read_scores(out / f"{name}.h5")  # what evaluate-heatmaps reads
        assert np.array_equal(coords, bag.coords) and coords_attrs["patch_size_level0"] == 128
        with h5py.File(out / f"{name}.h5") as f:
            assert {"coords", "scores", "heatmap", "heatmap_count", "attention"} <= set(f) and "instance_scores" not in f
            attention = f["attention"][()]
        assert attrs["aggregate"] == "model" and attrs["map"] == "attention / max attention" and attrs["complete"]
        assert abs(attention.sum() - 1) < 1e-4 and (attention >= 0).all()
        assert np.allclose(scores[:, 1], attention / attention.max(), atol=1e-6) and scores[:, 1].max() == 1
        assert (scores[:, 0] == 0).all()
        with torch.no_grad():  # the whole bag through the model, raw features in (it standardises them itself)
            probs = loaded.module(torch.from_numpy(bag.features)[None]).logits.softmax(-1)[0].numpy()
        assert np.isclose(attrs["score"], probs[1], atol=1e-5) and np.isclose(row["score"], probs[1], atol=1e-5)
        assert (out / f"{name}_heatmap.png").stat().st_size > 1000
        features = json.loads((out / f"{name}.geojson").read_text())["features"]
        tiles = [g for g in features if g["properties"]["objectType"] == "tile"]
        assert len(tiles) == len(coords) and {"attention_rel", "attention"} == set(tiles[0]["properties"]["measurements"])
        regions = [g["properties"] for g in features if g["properties"]["objectType"] == "annotation"]
        assert regions  # the most-attended tile is at 1, above any threshold: named as attention, not probability
        assert all("attention / max attention >= 0.5" in r["name"] and "max_attention_rel" in r["measurements"]
                   for r in regions)
    quality = json.loads((out / "quality.json").read_text())
    assert quality["n_slides"] == N_SLIDES and "auroc" in quality["tile"] and "score" in quality["froc"]
    within = quality["tile_within_tumour"]
    assert within["n_slides"] == 3 and set(within["slides"]) == {"demo_001", "demo_003", "demo_005"}
    assert np.isclose(within["mean_auroc"], np.mean(list(within["slides"].values())))


def test_rerun_skips_finished_slides(mil_run, from_features):
    _, out = from_features
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("demo_*")}
    assert main([str(mil_run["run"]), str(mil_run["slides"]), "--out", str(out), "--features-dir", str(mil_run["features"]),
                 "--num-workers", "0"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["status"] == "skipped").all() and summary["score"].notna().all()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("demo_*")} == before


def test_slides_without_features_are_embedded_with_the_training_encoder(mil_run, from_features):
    _, with_features = from_features
    out = mil_run["root"] / "out_embedded"
    slides = [str(mil_run["slides"] / f"demo_00{i}.tif") for i in (0, 1)]
    assert main([str(mil_run["run"]), *slides, "--out", str(out), "--num-workers", "0"]) == 0
    for name in ("demo_000", "demo_001"):
        with h5py.File(out / "features" / f"{name}.h5") as f:  # embedded at the training features' tiling
            assert f.attrs["tile_size"] == 64 and f.attrs["target_mpp"] == 1.0
        with h5py.File(out / f"{name}.h5") as f, h5py.File(with_features / f"{name}.h5") as g:
            assert np.allclose(f["attention"][()], g["attention"][()], atol=1e-5)
            assert np.isclose(f.attrs["score"], g.attrs["score"], atol=1e-5)


def test_foreign_features_and_unrecorded_encoders_are_refused_clearly(mil_run, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(mil_run["features"] / "demo_000.h5", foreign / "demo_000.h5")
    with h5py.File(foreign / "demo_000.h5", "r+") as f:  # features "made" by another encoder
        record = json.loads(f.attrs["encoder"])
        f.attrs["encoder"] = json.dumps({**record, "name": "resnet18", "mean": [0.485, 0.456, 0.406]})
    code = main([str(mil_run["run"]), str(mil_run["slides"] / "demo_000.tif"), "--out", str(tmp_path / "out"),
                 "--features-dir", str(foreign), "--num-workers", "0"])
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert code == 1 and row["status"] == "failed"
    assert "'resnet18'" in row["error"] and "'test_resnet'" in row["error"] and "--features-dir" in row["error"]

    run = tmp_path / "clam_run"  # a checkpoint trained on features without an encoder record (CLAM files)
    shutil.copytree(mil_run["run"], run)
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)
        state["hyper_parameters"]["feature_encoder"] = None
        state["medconv"]["hparams"]["feature_encoder"] = None  # the run record holds the same
        state["medconv"]["data"]["preprocessing"]["feature_encoder"] = None
        torch.save(state, ckpt)
    capsys.readouterr()
    assert main([str(run), str(mil_run["slides"] / "demo_000.tif"), "--out", str(tmp_path / "out2")]) == 2
    assert "--features-dir" in capsys.readouterr().err


def test_relative_attention():
    from medconv.inference.mil_run import relative_attention

    assert np.allclose(relative_attention(np.array([0.1, 0.4, 0.5])), [0.2, 0.8, 1.0])
    assert np.array_equal(relative_attention(np.zeros(3)), np.zeros(3)) and relative_attention(np.zeros(0)).shape == (0,)
