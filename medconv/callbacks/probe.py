"""k-NN and linear-probe AUROC of the frozen encoder during pretraining: is the representation getting better?

Pretraining losses say little about downstream use; a probe on a small labelled subset does. Every
`every_n_epochs` (and after the last epoch) the callback takes `pl_module.encoder()` (the exported encoder: the
backbone for masked modelling, the teacher's for DINO), extracts pooled features of
`trainer.datamodule.probe_dataloaders()` (train subset, val set) in eval mode under no_grad, and logs
`probe/knn_auroc` and `probe/linear_auroc` (medconv.ssl.probe) like any other metric (metrics.csv, TensorBoard).

Hook: `on_train_epoch_end`, which runs with or without a validation loop (after it, when there is one), and
where Lightning accepts `log()` from a callback. If the fit ends in a way the callback could not foresee at
that hook (a callback that stops training after it ran), `on_train_end` probes once more and writes the two
numbers to the loggers directly, since `log()` is not allowed there.

DDP: only global rank 0 extracts and fits; other ranks return at once and wait at their next collective (the
probe is small). Nothing inside calls a collective: the encoder is used unwrapped, and values are logged with
`rank_zero_only=True` (so they cannot be a checkpoint monitor).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from medconv import keys
from medconv.ssl.probe import probe_aurocs


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode for the block; every submodule's own mode is restored after (frozen norms stay frozen)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def last_epoch(trainer: L.Trainer) -> bool:
    """Whether the fit stops after the epoch now ending (max_epochs, max_steps, or a stop already requested)."""
    epoch_done = trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch + 1 >= trainer.max_epochs
    steps_done = trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps
    return bool(epoch_done or steps_done or trainer.should_stop)


@torch.no_grad()
def extract_features(
    encoder: nn.Module, loader, device: torch.device, max_batches: int | None = None, context=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, D) float32 and labels (N,) on the CPU, from batches of `{IMAGE, LABEL, ...}`."""
    features, labels = [], []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images = batch[keys.IMAGE].to(device, non_blocking=True)
        with context() if context is not None else nullcontext():
            out = encoder(images)
        features.append(out.float().flatten(1).cpu())
        labels.append(torch.as_tensor(batch[keys.LABEL]).long().cpu())
    if not features:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels)


class RepresentationProbe(L.Callback):
    """Args:
        every_n_epochs: probe after every n-th training epoch (and after the last one).
        k: neighbours in the k-NN vote.
        temperature: k-NN votes are weighted exp(cosine / temperature), as in DINO's k-NN evaluation
            (0.07 there); a very large value (e.g. 1e9) gives a plain majority vote.
        weight_decay: L2 strength of the logistic-regression probe (on standardised features).
        max_iter: L-BFGS iterations of the probe.
        max_batches: cap on batches read from each probe loader (None: all).
    """

    def __init__(self, every_n_epochs: int = 1, k: int = 20, temperature: float = 0.07, weight_decay: float = 1e-2,
                 max_iter: int = 100, max_batches: int | None = None):
        if every_n_epochs < 1 or k < 1 or temperature <= 0:
            raise ValueError("RepresentationProbe: every_n_epochs and k must be >= 1 and temperature > 0")
        self.every_n_epochs, self.k, self.temperature = every_n_epochs, k, temperature
        self.weight_decay, self.max_iter, self.max_batches = weight_decay, max_iter, max_batches
        self._loaders = None
        self._unavailable = False
        self._probed_step: int | None = None
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last_epoch(trainer):
            return
        metrics = self._probe(trainer, pl_module)
        for name, value in metrics.items():
            pl_module.log(f"probe/{name}", value, on_step=False, on_epoch=True, rank_zero_only=True, batch_size=1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._probed_step == trainer.global_step or trainer.global_step == 0:
            return
        metrics = self._probe(trainer, pl_module)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics({f"probe/{k}": v for k, v in metrics.items()}, step=trainer.global_step)
                logger.save()

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        loaders = self._probe_loaders(trainer)
        if loaders is None:
            return {}
        self._probed_step = trainer.global_step
        encoder = pl_module.encoder()
        device = pl_module.device
        context = getattr(trainer.precision_plugin, "forward_context", None)
        with eval_mode(encoder):
            train_x, train_y = extract_features(encoder, loaders[0], device, self.max_batches, context)
            val_x, val_y = extract_features(encoder, loaders[1], device, self.max_batches, context)
        if len(train_x) == 0 or len(val_x) == 0:
            rank_zero_warn("RepresentationProbe: a probe loader yielded no samples; nothing to probe this time.")
            return {}
        num_classes = self._num_classes(trainer, pl_module, train_y, val_y)
        metrics = probe_aurocs(train_x, train_y, val_x, val_y, num_classes, self.k, self.temperature,
                               self.weight_decay, self.max_iter)
        self.history.append({"epoch": float(trainer.current_epoch), "step": float(trainer.global_step), **metrics})
        return metrics

    def _probe_loaders(self, trainer: L.Trainer):
        if self._loaders is None and not self._unavailable:
            make = getattr(trainer.datamodule, "probe_dataloaders", None)
            self._loaders = make() if callable(make) else None
            if self._loaders is None:
                self._unavailable = True
                rank_zero_warn("RepresentationProbe: the data has no labelled probe subset (probe_dataloaders() is None "
                               "or missing); k-NN and linear-probe AUROC are skipped for this run.")
        return self._loaders

    @staticmethod
    def _num_classes(trainer: L.Trainer, pl_module: L.LightningModule, *labels: torch.Tensor) -> int:
        for source in (trainer.datamodule, pl_module):
            try:
                n = getattr(source, "num_classes", None)
            except Exception:  # a datamodule property that needs setup() first
                n = None
            if isinstance(n, int) and n >= 2:
                return n
        return max(2, int(max(int(y.max()) for y in labels if len(y))) + 1)

