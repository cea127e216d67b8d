"""Tiny inputs for the embedding tests: demo slides, and a medconv run (config.yaml + checkpoint) made without a fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

RUN_MEAN, RUN_STD = [0.6, 0.5, 0.4], [0.2, 0.25, 0.3]


@pytest.fixture(scope="session")
def emb_slides(tmp_path_factory) -> Path:
    """3 demo slides (1024x768 px at 0.5 um/px: ~25 tissue tiles of 64 px at 1 um/px each) under slides/."""
    from medconv.demo.wsi import generate_demo_slides

    out = tmp_path_factory.mktemp("emb_slides")
    generate_demo_slides(out, n_slides=3, seed=5, width=1024, height=768)
    return out / "slides"


@pytest.fixture(scope="session")
def wsi_run(tmp_path_factory) -> Path:
    """A run folder as `medconv fit` leaves it for an untrained test_resnet slide classifier: 64 px tiles at 1 um/px,
    resized to 48 px, with its own mean/std."""
    from medconv.models import TimmBackbone
    from medconv.tasks import ClassificationModule

    run = tmp_path_factory.mktemp("wsi_run")
    config = {
        "model": {"class_path": "medconv.tasks.ClassificationModule",
                  "init_args": {"backbone": {"class_path": "medconv.models.TimmBackbone", "init_args": {"name": "test_resnet"}}}},
        "data": {"class_path": "medconv.wsi.datamodule.WSITileDataModule",
                 "init_args": {"image_size": [48, 48], "tile_size": 64, "target_mpp": 1.0, "mean": RUN_MEAN, "std": RUN_STD,
                               "classes": ["normal", "tumor"]}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(1)
    module = ClassificationModule(TimmBackbone("test_resnet", img_size=(48, 48)), num_classes=2)
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"num_classes": 2}}, run / "checkpoints" / "best.ckpt")
    return run
