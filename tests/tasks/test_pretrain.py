"""PretrainModule orchestration and the encoder export, with a toy objective (the real ones are tested in tests/ssl)."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medconv import keys
from medconv.callbacks.encoder_export import EncoderExport
from medconv.errors import ConfigError
from medconv.models import TimmBackbone
from medconv.tasks.pretrain import PretrainModule

TINY = dict(name="resnet10t", in_chans=1, img_size=(32, 32))


class _Images(Dataset):
    def __init__(self, n: int = 8):
        self.x = torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.x[i]}  # no label: pretraining never needs one


class _MeanPixel(nn.Module):
    """Predict each image's mean from pooled features; a frozen EMA copy plays the teacher."""

    def __init__(self, backbone: nn.Module, scale: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, 1)
        self.teacher = copy.deepcopy(backbone).requires_grad_(False)
        self.scale = scale
        self.steps: list[tuple[int, int]] = []

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x = batch[keys.IMAGE]
        pred = self.head(self.backbone(x)).squeeze(1)
        loss = (pred - self.scale * x.mean((1, 2, 3))).abs().mean()
        return {"loss": loss, "pred_mean": pred.mean().detach()}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.steps.append((step, total_steps))

    def export_encoder(self) -> nn.Module:
        return self.backbone


def _fit(tmp_path, objective=_MeanPixel, epochs: int = 2) -> PretrainModule:
    module = PretrainModule(TimmBackbone(**TINY), objective=objective, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path, name="run"),
                        callbacks=[EncoderExport()], enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=DataLoader(_Images(), batch_size=4))
    return module


def test_fit_calls_schedule_hook_and_exports_a_strictly_loadable_encoder(tmp_path):
    module = _fit(tmp_path)
    assert module.objective.steps == [(1, 4), (2, 4), (3, 4), (4, 4)]  # once per optimiser step, with the run length
    run = tmp_path / "run" / "version_0"
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["timm_name"] == "resnet10t" and meta["in_chans"] == 1 and meta["img_size"] == [32, 32]
    assert meta["method"] == "_MeanPixel" and meta["epochs"] == 2 and meta["global_step"] == 4
    loaded = TimmBackbone(**TINY, pretrained_path=str(run / "encoder.safetensors"), strict_weights=True)
    assert loaded.weight_report.ok and not loaded.weight_report.prefix
    for key, value in module.backbone.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    metrics = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_step" in metrics and "train/pred_mean" in metrics


def test_parameter_groups_skip_frozen_teacher_and_do_not_decay_norms_or_biases():
    module = PretrainModule(TimmBackbone(**TINY), objective=_MeanPixel)
    decay, no_decay = module.parameter_groups()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])
    teacher = {id(p) for p in module.objective.teacher.parameters()}
    assert not teacher & {id(p) for g in (decay, no_decay) for p in g["params"]}


def test_an_objective_without_export_is_a_config_error():
    class NotSSL(nn.Module):
        def __init__(self, backbone: nn.Module):
            super().__init__()

    with pytest.raises(ConfigError, match="export_encoder"):
        PretrainModule(TimmBackbone(**TINY), objective=NotSSL)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    with pytest.raises(FloatingPointError, match="lower the LR"):
        _fit(tmp_path, objective=lambda b: _MeanPixel(b, scale=float("nan")), epochs=1)


def test_linear_probe_keeps_encoder_weights_and_batchnorm_statistics():
    from medconv.tasks import ClassificationModule

    module = ClassificationModule(TimmBackbone(**TINY), num_classes=2, freeze_backbone=True, scheduler=None,
                                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    opt = module.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in module.head.parameters())
    module.train()
    assert module.head.training and not module.backbone.training
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])
    torch.nn.functional.cross_entropy(module(x), y).backward()
    opt.step()
    for key, value in module.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BN running stats alike
