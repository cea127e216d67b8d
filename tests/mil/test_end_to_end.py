"""End-to-end MIL: bags of tiles sampled from a generated slide's coords store go through a tiny encoder, trained
by the slide loss under gradient checkpointing."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from medconv import keys
from medconv.mil import MILDataModule
from medconv.models import TimmBackbone
from medconv.models.mil import ABMIL
from medconv.tasks import MILModule

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    from medconv.demo.wsi import generate_demo_slides
    from medconv.tiling.slide_tiler import TileOptions, tile_slide

    root = tmp_path_factory.mktemp("e2e")
    manifest = generate_demo_slides(root, n_slides=4, width=1024, height=768)
    for slide in pd.read_csv(manifest)["slide_path"]:
        tile_slide(root / slide, root / "coords", Path(slide).stem, TileOptions(target_mpp=1.0, tile_size=32))
    return manifest


def test_tile_bags_train_the_encoder_through_the_bag_loss(tiled):
    dm = MILDataModule(manifest=str(tiled), bag_source="tiles", coords_dir=str(tiled.parent / "coords"), image_size=(32, 32),
                       tiles_per_bag=4, eval_tiles_per_bag=5, batch_size=2, num_workers=0, val_fraction=0.5)
    assert dm.feature_dim is None  # the encoder decides the width
    dm.setup("fit")
    train = dm.datasets["train"]
    first, again, later = train[0], train[0], train[0 + len(train) * 3]
    assert first[keys.IMAGE].shape == (4, 3, 32, 32) and first[keys.COORDS].shape == (4, 2)
    assert torch.equal(first[keys.COORDS], again[keys.COORDS]) and not torch.equal(first[keys.COORDS], later[keys.COORDS])
    assert dm.datasets["val"][0][keys.IMAGE].shape[0] == 5

    torch.manual_seed(0)
    encoder = TimmBackbone("convnext_atto", img_size=(32, 32), model_args={"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]})
    model = MILModule(partial(ABMIL, hidden_dim=8, attention_dim=4, dropout=0.0), encoder=encoder, grad_checkpointing=True,
                      encoder_chunk=3, scheduler=None)
    calls = []
    encoder.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    before = [p.detach().clone() for p in encoder.parameters()]
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert any(not torch.equal(b, p) for b, p in zip(before, encoder.parameters(), strict=True))  # the encoder learned
    # 2 bags x 4 tiles in chunks of 3: 3 encoder calls per step, each recomputed in backward; 2 val bags x 5 tiles: 4
    assert sum(calls) == 2 * 3 * 2 and (len(calls) - sum(calls)) % 4 == 0
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and model.eval_rows["probs"].shape == (2, 2)
