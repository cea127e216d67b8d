"""A run is an artifact: a fitted checkpoint carries its run record, and a lone copy of it, far from its run folder,
infers and embeds exactly as the run does. Checkpoints without a record still load through their config.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from medconv.runs import find_checkpoint, load_run, run_record

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLIDES = ["demo_000", "demo_001", "demo_002"]


def lone_copy(run: Path, folder: Path) -> Path:
    """The run's best checkpoint alone in another folder: no config.yaml, manifest or run files near it."""
    folder.mkdir(parents=True)
    lone = folder / "model.ckpt"
    shutil.copy(find_checkpoint(run), lone)
    assert not any((p / "config.yaml").exists() for p in lone.parents)
    return lone


def test_fit_writes_the_run_record_into_its_checkpoints(tiny_wsi_run):
    for ckpt in (tiny_wsi_run / "checkpoints").glob("*.ckpt"):
        record = torch.load(ckpt, map_location="cpu", weights_only=True)["medconv"]
        assert record["task"] == "classify" and record["format"] == 1
        data = record["data"]
        assert data["modality"] == "wsi" and data["classes"] == ["normal", "tumor"]
        assert data["image_size"] == [64, 64] and data["in_chans"] == 3
        assert data["preprocessing"]["tile_size"] == 64 and data["preprocessing"]["target_mpp"] == 1.0
        assert len(data["preprocessing"]["mean"]) == 3 and data["eval_groups"] == {"slide": ["slide_id"]}
        backbone = record["model"]["init_args"]["backbone"]
        assert backbone["init_args"]["name"] == "convnext_atto"
        assert "pretrained_path" not in backbone["init_args"]  # training-only arguments are not part of the model


def test_a_lone_checkpoint_infers_as_its_run(tiny_wsi_run, held_out_slides, inferred, tmp_path):
    from medconv.inference.cli import main

    code, from_run = inferred
    assert code == 0
    lone = lone_copy(tiny_wsi_run, tmp_path / "elsewhere")
    shutil.copytree(tiny_wsi_run, tmp_path / "run_copy")
    shutil.rmtree(tmp_path / "run_copy")  # whatever the run folder held is gone; only the .ckpt travels
    out = tmp_path / "out"
    assert main([str(lone), str(held_out_slides / "slides"), "--out", str(out), "--num-workers", "2", "--batch-size", "16",
                 "--aggregate", "topk:3"]) == 0
    a, b = (pd.read_csv(d / "summary.csv").set_index("slide").sort_index() for d in (from_run, out))
    assert list(a.index) == SLIDES and (b["status"] == "ok").all()
    assert np.allclose(a["score"], b["score"], atol=1e-6) and list(a["predicted_class"]) == list(b["predicted_class"])
    for slide in SLIDES:
        with h5py.File(from_run / f"{slide}.h5") as f, h5py.File(out / f"{slide}.h5") as g:
            assert np.array_equal(f["coords"][()], g["coords"][()])
            assert np.allclose(f["scores"][()], g["scores"][()], atol=1e-6)


def test_a_lone_checkpoint_embeds_as_its_run(tiny_wsi_run, held_out_slides, tmp_path):
    from medconv.embedding.cli import main as embed

    lone = lone_copy(tiny_wsi_run, tmp_path / "elsewhere")
    slide = str(held_out_slides / "slides" / "demo_001.tif")
    common = ["--num-workers", "0", "--batch-size", "16", "--precision", "32-true"]
    assert embed([str(tiny_wsi_run), slide, "--out", str(tmp_path / "from_run"), *common]) == 0
    assert embed([str(lone), slide, "--out", str(tmp_path / "from_lone"), *common]) == 0
    with h5py.File(tmp_path / "from_run" / "demo_001.h5") as f, h5py.File(tmp_path / "from_lone" / "demo_001.h5") as g:
        assert f["features"].shape[0] > 5 and f["features"].shape[1] == 320  # convnext_atto's width
        assert np.array_equal(f["coords"][()], g["coords"][()])
        assert np.allclose(f["features"][()], g["features"][()], atol=1e-6)


def test_load_run_gives_what_inference_repeats(tiny_wsi_run):
    run = load_run(tiny_wsi_run)
    assert run.task == "classify" and run.modality == "wsi" and run.classes == ["normal", "tumor"]
    assert (run.tile_size, run.target_mpp, run.image_size, run.in_chans) == (64, 1.0, (64, 64), 3)
    assert run.config is None and not run.module.training
    assert run_record(tiny_wsi_run)["data"]["modality"] == "wsi"


def test_a_checkpoint_without_a_record_loads_through_its_config_with_a_note(tmp_path, tiny_wsi_run):
    """Runs of earlier versions: the record is rebuilt from config.yaml beside the checkpoint."""
    old = tmp_path / "old_run"
    shutil.copytree(tiny_wsi_run, old, ignore=shutil.ignore_patterns("eval"))
    ckpt = find_checkpoint(old)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state["medconv"]
    torch.save(state, ckpt)
    with pytest.warns(FutureWarning, match="no run record"):
        run = load_run(ckpt)
    new = load_run(tiny_wsi_run)
    assert (run.modality, run.classes, run.tile_size, run.target_mpp) == (new.modality, new.classes, 64, 1.0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(run.module(x), new.module(x))
