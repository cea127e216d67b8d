"""A training step never waits for the device: between logging steps (`Trainer(log_every_n_steps=...)`) no task
reads a tensor on the host (`.item()`, `.cpu()`, `.tolist()`, `bool(t)`, ...) or reduces across processes.

On a GPU each such read stalls the host until the step's queued kernels finish, and a per-step all-reduce stalls
every process; both showed as a training loop slower than a bare timm loop (`medconv bench gpu --sections
overhead`). Here the loop runs on the CPU under a one-process DDP strategy (gloo), so Lightning's reductions are
real `torch.distributed.all_reduce` calls. The CPU plays the device: `.cpu()` counts as the device-to-host copy
and returns a tensor marked as a host copy, whose later reads (the progress bar re-reading the loss shown at the
last logging step) cost nothing on a GPU and are not counted.
"""

from __future__ import annotations

from collections import Counter

import lightning as L
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

from medconv import keys
from medconv.models import TimmBackbone
from medconv.models.mil.pooling import ABMIL
from medconv.ssl.dino import DINO
from medconv.ssl.mim import MaskedImageModelling
from medconv.tasks import ClassificationModule
from medconv.tasks.mil import MILModule
from medconv.tasks.pretrain import PretrainModule

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, LOG_EVERY = 8, 4  # Lightning writes step metrics after steps 3 and 7 (0-based)
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce")
CONVNEXT = ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]})


class _HostCopy(torch.Tensor):
    """A tensor already copied to the host by a counted `.cpu()`."""


class _Counts:
    """Counts host reads of tensors, `Strategy.reduce` (what `self.log(..., sync_dist=True)` calls) and the
    collectives of `torch.distributed` called from Python (DDP's gradient all-reduce runs in C++ and is not seen)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: Counter[str] = Counter()
        for name in READS:
            self._patch_read(monkeypatch, name)
        for name in COLLECTIVES:
            self._patch(monkeypatch, dist, name, f"distributed.{name}")
        self._patch(monkeypatch, DDPStrategy, "reduce", "Strategy.reduce")

    def _patch_read(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, **kwargs):
            if isinstance(tensor, _HostCopy):
                return original(tensor, *args, **kwargs)
            self.calls[f"Tensor.{name}"] += 1
            out = original(tensor, *args, **kwargs)
            return out.clone().as_subclass(_HostCopy) if name == "cpu" else out

        monkeypatch.setattr(torch.Tensor, name, counted)

    def _patch(self, monkeypatch: pytest.MonkeyPatch, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.calls[label] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


class _PerStep(L.Callback):
    """What each training step cost, from its on_train_batch_start to the next one's (the step, the loop's
    logging and progress bar, fetching the next batch)."""

    def __init__(self, counts: _Counts):
        self.counts = counts
        self.marks: list[Counter[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.marks.append(self.counts.calls.copy())

    def steps(self) -> list[Counter[str]]:
        return [after - before for before, after in zip(self.marks, self.marks[1:], strict=False)]


class _Batches(Dataset):
    """In-memory samples, so fetching a batch reads nothing from tensors."""

    def __init__(self, make, n: int):
        generator = torch.Generator().manual_seed(0)
        self.samples = [make(i, generator) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def _image(i: int, g: torch.Generator) -> dict:
    return {keys.IMAGE: torch.randn(1, 32, 32, generator=g), keys.LABEL: torch.tensor(i % 2)}


def _mim_image(i: int, g: torch.Generator) -> dict:
    return {keys.IMAGE: torch.randn(1, 64, 64, generator=g)}


def _crops(i: int, g: torch.Generator) -> dict:
    return {keys.CROPS: [torch.randn(3, 64, 64, generator=g) for _ in range(2)] + [torch.randn(3, 32, 32, generator=g)]}


def _bag(i: int, g: torch.Generator) -> dict:
    mask = torch.arange(12) < 6 + i % 6  # padded bags of 6..11 instances
    return {keys.FEATURES: torch.randn(12, 8, generator=g) * mask[:, None], keys.MASK: mask, keys.LABEL: torch.tensor(i % 2)}


def _sgd(params):
    """SGD: Adam's per-parameter step counters live on the host (PyTorch reads them with `.item()`, no device sync),
    which a CPU run cannot tell apart from a device read."""
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


TASKS = {
    "classification": (lambda: ClassificationModule(TimmBackbone("resnet10t", in_chans=1, img_size=(32, 32)), optimizer=_sgd), _image),
    "mil": (lambda: MILModule(ABMIL, in_dim=8, standardize_features=False, optimizer=_sgd), _bag),
    "pretrain-mim": (lambda: PretrainModule(TimmBackbone(CONVNEXT[0], in_chans=1, img_size=(64, 64), model_args=CONVNEXT[1]),
                                            objective=MaskedImageModelling, optimizer=_sgd), _mim_image),
    "pretrain-dino": (lambda: PretrainModule(TimmBackbone(CONVNEXT[0], in_chans=3, img_size=(64, 64), model_args=CONVNEXT[1]),
                                             objective=lambda b: DINO(b, out_dim=32, hidden_dim=32, bottleneck_dim=16),
                                             optimizer=_sgd), _crops),
}
# what a step may do besides: DINO all-reduces its centre (the teacher's mean logits over every process's batch) on
# the device, as DDP does its gradients; no host waits for it
EXPECTED = {"pretrain-dino": Counter({"distributed.all_reduce": 1})}


@pytest.fixture
def one_process_ddp(monkeypatch):
    """A one-process gloo group on a free port, torn down after the test so later tests run undistributed.
    OMP_NUM_THREADS keeps Lightning's DDP from raising the thread count (one thread is fastest on a shared CPU)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    yield DDPStrategy(process_group_backend="gloo")
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("task", list(TASKS))
def test_training_steps_between_logging_steps_never_read_the_device_or_reduce(task, tmp_path, monkeypatch, one_process_ddp):
    build, sample = TASKS[task]
    torch.manual_seed(0)
    module = build()
    counts = _Counts(monkeypatch)
    per_step = _PerStep(counts)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, strategy=one_process_ddp, max_epochs=1, log_every_n_steps=LOG_EVERY,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="run"), callbacks=[per_step], enable_progress_bar=True,
        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(_Batches(sample, 2 * STEPS), batch_size=2, shuffle=False))

    steps = per_step.steps()  # steps 0..6; step 7 ends the epoch (its reduction and logging are expected)
    assert len(steps) == STEPS - 1
    logging = {LOG_EVERY - 1}
    for step, calls in enumerate(steps):
        if step not in logging:
            expected = EXPECTED.get(task, Counter())
            assert calls == expected, f"{task}: training step {step} (not a logging step) read or reduced: {dict(calls - expected)}"
    # the counters see the reads that logging does: the loss is copied to the host for the logger and progress bar
    assert steps[LOG_EVERY - 1]["Tensor.cpu"] >= 1
    shown = trainer.progress_bar_metrics
    assert "train/loss_step" in shown and "train/loss_epoch" in shown


def test_epoch_loss_is_the_sample_weighted_mean_and_step_losses_reach_the_logger(tmp_path):
    """metrics.csv: `train/loss_step` at each logging step, `train/loss_epoch` the mean over the epoch's samples;
    `train/loss` stays a callback metric (a checkpoint can monitor it)."""
    losses: list[tuple[float, int]] = []

    class Recorded(ClassificationModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            losses.append((loss.item(), len(batch[keys.LABEL])))
            return loss

    torch.manual_seed(0)
    module = Recorded(TimmBackbone("resnet10t", in_chans=1, img_size=(32, 32)), optimizer=_sgd)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, log_every_n_steps=2, logger=L.pytorch.loggers.CSVLogger(tmp_path, name="run"),
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(_Batches(_image, 10), batch_size=4))  # batches of 4, 4, 2: the mean weighs samples

    metrics = pd.read_csv(tmp_path / "run" / "version_0" / "metrics.csv")
    step_rows = metrics.dropna(subset=["train/loss_step"])
    assert step_rows["step"].tolist() == [1, 3, 5]  # after optimiser steps 2, 4 and 6 (0-based: 1, 3, 5)
    assert step_rows["train/loss_step"].tolist() == pytest.approx([losses[i][0] for i in (1, 3, 5)], rel=1e-6)
    epochs = metrics.dropna(subset=["train/loss_epoch"])["train/loss_epoch"].tolist()
    for epoch, value in enumerate(epochs):
        rows = losses[3 * epoch: 3 * epoch + 3]
        assert value == pytest.approx(sum(v * n for v, n in rows) / sum(n for _, n in rows), rel=1e-6)
    assert len(epochs) == 2
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(epochs[-1], rel=1e-6)


def test_dino_temperature_schedule_resumes_from_a_checkpoint():
    """DINO reads its schedule position from host copies of the step buffers; loading a state dict (what a
    resumed fit does) must move them, or the teacher temperature would restart its warm-up."""

    def dino() -> DINO:
        torch.manual_seed(0)
        backbone = TimmBackbone(CONVNEXT[0], in_chans=3, img_size=(64, 64), model_args=CONVNEXT[1])
        return DINO(backbone, out_dim=32, hidden_dim=32, bottleneck_dim=16)  # warm-up 0.04 -> 0.07 over 30% of steps

    trained = dino()
    trained.after_optimizer_step(15, 100)
    assert trained.current_teacher_temp() == pytest.approx(0.04 + 0.03 * 15 / 30)
    resumed = dino()
    assert resumed.current_teacher_temp() == pytest.approx(0.04)
    resumed.load_state_dict(trained.state_dict())
    assert resumed.current_teacher_temp() == pytest.approx(0.055)
