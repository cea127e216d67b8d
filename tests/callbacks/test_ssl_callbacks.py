"""RepresentationProbe and MaskPreview inside a real Lightning fit, with a fake pretraining module and data.

The fake module has what the SSL contract promises callbacks (`.encoder()`, `.objective`); the fake objective
returns known tensors, so what the callbacks log and draw can be checked.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from medconv import keys
from medconv.callbacks import MaskPreview, RepresentationProbe
from medconv.callbacks.mask_preview import compose

SIZE = 16


def _images(n: int, seed: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Noise images; class 1 carries a bright square in the centre (a signal any random conv features pick up)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, SIZE, SIZE, generator=gen) * 0.3
    if labels is not None:
        x[labels == 1, :, 4:12, 4:12] += 3.0
    return x


def _samples(n: int, seed: int) -> list[dict]:
    labels = torch.arange(n) % 2
    return [{keys.IMAGE: x, keys.LABEL: int(y)} for x, y in zip(_images(n, seed, labels), labels, strict=True)]


class FakeData(L.LightningDataModule):
    """Unlabelled training batches (no val loop) and, optionally, labelled probe sets."""

    def __init__(self, probe: bool = True):
        super().__init__()
        self.probe = probe
        self.num_classes = 2
        self.probe_calls = 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{keys.IMAGE: x} for x in _images(16, 0)], batch_size=8)

    def probe_dataloaders(self):
        self.probe_calls += 1
        if not self.probe:
            return None
        return DataLoader(_samples(24, 1), batch_size=8), DataLoader(_samples(12, 2), batch_size=8)


class FakeObjective(nn.Module):
    """Masks the left half of the image; the 'reconstruction' is a constant 5 (known tensors for the preview)."""

    def __init__(self, backbone: nn.Module, with_mask: bool = True):
        super().__init__()
        self.backbone = backbone
        self.with_mask = with_mask
        self.calls: list[dict] = []

    def forward(self, batch: dict) -> dict:
        x = batch[keys.IMAGE]
        self.calls.append({"training": self.training, "grad": torch.is_grad_enabled(), "n": len(x), "rand": torch.rand(1).item()})
        loss = self.backbone(x).pow(2).mean()
        if not self.with_mask:
            return {"loss": loss}
        mask = torch.zeros(len(x), 1, *x.shape[2:])
        mask[..., : x.shape[-1] // 2] = 1
        return {"loss": loss, "mask": mask, "reconstruction": torch.full_like(x, 5.0), "target": x}

    def export_encoder(self) -> nn.Module:
        return self.backbone


class FakePretrain(L.LightningModule):
    def __init__(self, with_mask: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.objective = FakeObjective(self.backbone, with_mask)
        self.encoder_modes: list[tuple[bool, bool]] = []
        self.backbone.register_forward_hook(lambda m, i, o: self.encoder_modes.append((m.training, torch.is_grad_enabled())))

    def encoder(self) -> nn.Module:
        return self.objective.export_encoder()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.objective(batch)["loss"]
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path: Path, module: L.LightningModule, data: L.LightningDataModule, callbacks: list, **kwargs) -> Path:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="run"), callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, **{"max_epochs": 2, **kwargs})
    trainer.fit(module, datamodule=data)
    return Path(trainer.loggers[0].log_dir)


def _probe_rows(run: Path) -> pd.DataFrame:
    metrics = pd.read_csv(run / "metrics.csv")
    return metrics.dropna(subset=["probe/knn_auroc"])[["epoch", "step", "probe/knn_auroc", "probe/linear_auroc"]]


def test_probe_logs_both_aurocs_each_epoch_without_a_val_loop(tmp_path: Path) -> None:
    module, probe = FakePretrain(), RepresentationProbe(every_n_epochs=1, k=5)
    run = _fit(tmp_path, module, FakeData(), [probe])
    rows = _probe_rows(run)
    assert rows["epoch"].tolist() == [0, 1]
    # The bright square separates the classes in any conv feature space: both read-outs see it.
    assert (rows["probe/knn_auroc"] > 0.9).all() and (rows["probe/linear_auroc"] > 0.9).all()
    # Features came from the encoder in eval mode under no_grad; training forwards ran in train mode with grad.
    probe_forwards = [mode for mode in module.encoder_modes if not mode[1]]
    assert probe_forwards and all(mode == (False, False) for mode in probe_forwards)
    assert all(mode == (True, True) for mode in module.encoder_modes if mode[1])
    assert module.backbone.training  # restored after the probe
    assert len(probe.history) == 2


def test_probe_every_n_epochs_also_probes_the_last_one_and_a_fit_stopped_by_another_callback(tmp_path: Path) -> None:
    run = _fit(tmp_path / "a", FakePretrain(), FakeData(), [RepresentationProbe(every_n_epochs=2, k=5)], max_epochs=3)
    assert _probe_rows(run)["epoch"].tolist() == [1, 2]  # the 2nd epoch (every 2) and the last

    class StopAfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True  # decided after the probe's own hook ran

    probe = RepresentationProbe(every_n_epochs=5, k=5)
    run = _fit(tmp_path / "b", FakePretrain(), FakeData(), [probe, StopAfterFirstEpoch()], max_epochs=5)
    metrics = pd.read_csv(run / "metrics.csv")
    final = metrics.dropna(subset=["probe/linear_auroc"])
    assert len(final) == 1 and final["step"].item() == 2  # probed once at the end of fit, written to the logger
    assert final["probe/linear_auroc"].item() > 0.9


def test_probe_skips_with_one_warning_when_the_data_has_no_labels(tmp_path: Path) -> None:
    data = FakeData(probe=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _fit(tmp_path, FakePretrain(), data, [RepresentationProbe()])
    messages = [str(w.message) for w in caught if "probe subset" in str(w.message)]
    assert len(messages) == 1 and data.probe_calls == 1
    assert not any(c.startswith("probe/") for c in pd.read_csv(run / "metrics.csv").columns)


def test_probe_does_nothing_on_other_ranks() -> None:
    module = FakePretrain()
    trainer = SimpleNamespace(is_global_zero=False, sanity_checking=False, current_epoch=0, global_step=4)
    RepresentationProbe().on_train_epoch_end(trainer, module)
    RepresentationProbe().on_train_end(trainer, module)
    assert module.encoder_modes == []


def test_compose_takes_masked_cells_from_the_prediction() -> None:
    target = torch.arange(8.0).reshape(1, 1, 2, 4)
    mask = torch.tensor([[[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]]])
    out = compose(mask, torch.full_like(target, -1.0), target)
    assert out.tolist() == [[[[-1.0, -1.0, 2.0, 3.0], [4.0, 5.0, -1.0, -1.0]]]]


def test_mask_preview_after_first_and_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medconv.callbacks.mask_preview as mp

    drawn = []
    real = mp.render_preview
    monkeypatch.setattr(mp, "render_preview", lambda *a, **k: drawn.append(a) or real(*a, **k))
    module = FakePretrain()
    torch.manual_seed(123)
    run = _fit(tmp_path, module, FakeData(), [MaskPreview(n_images=3, seed=7)], max_epochs=3)
    assert len(drawn) == 2  # after the first epoch and at the end, not after the middle one
    images, mask, reconstruction, target, path = drawn[-1][:5]
    assert path == run / "mask_preview.png" and path.is_file()
    assert torch.equal(images, _images(16, 0)[:3])  # the first 3 images of the first training batch
    assert mask.shape == (3, 1, SIZE, SIZE) and (reconstruction == 5).all() and torch.equal(target, images)
    preview_calls = [c for c in module.objective.calls if c["n"] == 3]
    assert len(preview_calls) == 2 and all(not c["training"] and not c["grad"] for c in preview_calls)
    assert preview_calls[0]["rand"] == preview_calls[1]["rand"]  # the same seeded draw each time
    assert module.objective.training
    # The picture: 3 rows x 3 columns (the target is the input: no 4th column), masked half tinted red.
    from PIL import Image

    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert 0.85 < png.shape[1] / png.shape[0] < 1.05  # figure 7.2 x 7.6 in; a 4th column would make it 9.6 wide
    red = (png[..., 0] > png[..., 1] + 60) & (png[..., 0] > png[..., 2] + 60)
    assert red.sum() > 0.02 * red.size


def test_mask_preview_is_silent_for_objectives_without_a_mask(tmp_path: Path) -> None:
    module = FakePretrain(with_mask=False)
    run = _fit(tmp_path, module, FakeData(), [MaskPreview()], max_epochs=1)
    assert not (run / "mask_preview.png").exists()
    assert len([c for c in module.objective.calls if c["n"] == 4]) == 1  # tried once, then disabled
