"""`medconv export` of a pretraining run: the encoder the objective exports, headless (`num_classes=0`), in timm's
format with the run's input recipe and a card naming the objective."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file

from medconv.export import export_run
from medconv.runs import find_checkpoint, load_run

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_pretraining_run_exports_its_encoder_for_plain_timm(mim_run, tmp_path):
    result = export_run(mim_run, tmp_path / "mim")
    model = timm.create_model(f"local-dir:{result.out}", pretrained=True).eval()
    run = load_run(mim_run)
    x = torch.randn(2, 1, 128, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features, expected = model(x), run.module(x)
    assert model.num_classes == 0 and features.shape == (2, 320)
    assert torch.allclose(features, expected, atol=1e-5)
    config = json.loads((result.out / "config.json").read_text())
    assert config["num_classes"] == 0 and "label_names" not in config
    assert tuple(model.pretrained_cfg["input_size"]) == (1, 128, 64) and list(model.pretrained_cfg["mean"]) == list(run.mean)
    # the same tensors as the encoder.safetensors the fit exported
    exported, ours = load_file(mim_run / "encoder.safetensors"), load_file(result.out / "model.safetensors")
    assert exported.keys() == ours.keys() and all(torch.equal(exported[k], ours[k]) for k in ours)
    card = (result.out / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "- self-supervised" in card and "- mammography" in card
    assert "`MaskedImageModelling` (mask_ratio=0.6" in card and "1 epoch, 2 optimiser steps" in card
    assert "no labels were used" in card and "num_classes=2" in card  # the fine-tune snippet


def test_the_objectives_exported_encoder_is_what_is_written(mim_run, tmp_path):
    """DINO exports its EMA teacher, kept beside the student under `objective.teacher_backbone.`: the export takes it."""
    ckpt = tmp_path / "run" / "checkpoints" / "teacher.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(find_checkpoint(mim_run), ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    student = {k: v for k, v in state["state_dict"].items() if k.startswith("backbone.")}
    teacher = {f"objective.teacher_{k}": v + 0.01 if v.is_floating_point() else v for k, v in student.items()}
    state["state_dict"] |= teacher
    torch.save(state, ckpt)
    written = load_file(export_run(ckpt, tmp_path / "out").out / "model.safetensors")
    for key, value in teacher.items():
        assert torch.equal(written[key.removeprefix("objective.teacher_backbone.model.")], value)
