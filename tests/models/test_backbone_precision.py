"""Gradient checkpointing is exact for every family; every family trains under bf16 and fp16 autocast."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medconv.models import TimmBackbone

_spec = importlib.util.spec_from_file_location("_tiny", Path(__file__).with_name("_tiny.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)
FAMILIES = _tiny.FAMILIES


def _tiny_backbone(family: str, size=(32, 64), **options) -> TimmBackbone:
    name, model_args = FAMILIES[family]
    return TimmBackbone(name, in_chans=1, img_size=size, model_args=model_args, **options)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_grad_checkpointing_gives_the_same_gradients(family):
    torch.manual_seed(0)
    plain = _tiny_backbone(family).eval()  # eval: BatchNorm statistics are not updated twice
    checkpointed = _tiny_backbone(family, grad_checkpointing=True).eval()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 32, 64)
    for model in (plain, checkpointed):
        model(x).square().mean().backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for name, param in checkpointed.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("family", "dtype"),
    [(family, torch.bfloat16) for family in FAMILIES] + [("vit", torch.float16), ("hiera", torch.float16)],
)
def test_trains_under_autocast_with_loss_scaling(family, dtype):
    """bf16 autocast (bf16-mixed), and fp16 with a GradScaler (16-mixed; slow on CPU, so two families here)."""
    torch.manual_seed(0)
    backbone = _tiny_backbone(family, grad_checkpointing=True)
    head = nn.Linear(backbone.num_features, 2)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3)
    x, y = torch.randn(2, 1, 32, 64), torch.tensor([0, 1])
    before = [p.detach().clone() for p in params]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=dtype == torch.float16)
    for _ in range(2):
        with torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.cross_entropy(head(backbone(x)), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


class _TinyTask(L.LightningModule):
    """Stand-in for the classification task: backbone plus linear head, so this file tests the backbone only."""

    def __init__(self, backbone: TimmBackbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_lightning_trainer_bf16_mixed():
    """32-true is every other test here; 16-mixed is mapped to bf16 on CPU by Lightning, tests/gpu runs it."""
    precision = "bf16-mixed"
    task = _TinyTask(_tiny_backbone("hiera", grad_checkpointing=True, attention="math"))
    data = DataLoader(TensorDataset(torch.randn(4, 1, 32, 64), torch.tensor([0, 1, 0, 1])), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(task, data)
    assert trainer.global_step == 2
