"""Slide-level multiple-instance learning: an injected aggregator (ABMIL, CLAM-SB, TransMIL) over feature bags, or
over tiles encoded on the fly by an optional encoder fine-tuned end to end. Evaluation rows and metrics are the
classification task's (one row per slide), so the same callbacks write metrics, predictions, ROC and summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.checkpoint import checkpoint

from medconv import keys
from medconv.errors import ConfigError
from medconv.models.mil.pooling import MILOutput, full_mask
from medconv.tasks.evaluation import META_KEYS, EvalRows
from medconv.tasks.run_record import RunRecord
from medconv.tasks.schedules import WarmupCosine, optimization
from medconv.tasks.step_logging import log_train_loss


class MILModule(RunRecord, EvalRows, L.LightningModule):
    """Args:
        aggregator: called as `aggregator(in_dim, num_classes)` to build the pooling model; in a config a
            class_path + init_args without those two (e.g. `medconv.mil.ABMIL`), which the task fills. An
            `nn.Module` is used as given.
        in_dim: bag feature width, linked from the data (`MILDataModule.feature_dim`); with an encoder, the
            encoder's `num_features` instead.
        num_classes, eval_groups: linked from the data by the CLI.
        encoder: a tile encoder (`medconv.models.TimmBackbone`) for bags of tiles (`bag_source: tiles`),
            trained through the bag loss.
        grad_checkpointing: encode tiles in chunks of `encoder_chunk` under `torch.utils.checkpoint`, so only the
            bag's features stay in memory and each chunk's activations are recomputed in backward (an encoder with
            BatchNorm then updates its running statistics twice per step).
        criterion: the bag loss; default plain cross-entropy.
        instance_loss_weight: w in (1 - w) * bag loss + w * the aggregator's `extra_loss` (CLAM's instance loss:
            the paper's 0.3), applied only when the aggregator returns one.
        optimizer, scheduler, scheduler_interval: as for `ClassificationModule`.
        standardize_features: feature bags are standardised per dimension with the training bags' mean and standard
            deviation (computed once at the start of fit, kept in the checkpoint as buffers, so inference repeats
            it). Why: features of a frozen encoder can vary by a tiny fraction of their offset (an untrained or
            foreign-domain encoder), which an MLP at the usual learning rates barely moves on.
        feature_encoder, feature_tiling: the `medconv embed` record of the encoder the bags came from and how they were
            tiled (tile size, mpp, tissue threshold); filled from the data at fit, so `medconv infer` can embed new
            slides the same way.
    """

    task = "mil"

    def __init__(
        self,
        aggregator: Callable[[int, int], nn.Module],
        in_dim: int | None = None,
        num_classes: int = 2,
        encoder: nn.Module | None = None,
        criterion: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosine,
        scheduler_interval: Literal["step", "epoch"] = "step",
        instance_loss_weight: float = 0.3,
        grad_checkpointing: bool = False,
        encoder_chunk: int = 64,
        eval_groups: dict[str, list[str]] | None = None,
        group_reduce: Literal["max", "mean"] = "max",
        standardize_features: bool = True,
        feature_encoder: dict | None = None,
        feature_tiling: dict | None = None,
    ):
        super().__init__()
        self._init_eval(eval_groups, group_reduce)
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(f"scheduler_interval must be 'step' or 'epoch', not {scheduler_interval!r}")
        if not 0 <= instance_loss_weight <= 1:
            raise ConfigError(f"instance_loss_weight must be in [0, 1], not {instance_loss_weight}")
        self.save_hyperparameters(ignore=["aggregator", "encoder", "criterion", "optimizer", "scheduler"])
        self.encoder = encoder
        if encoder is not None:
            in_dim = int(encoder.num_features)
        if isinstance(aggregator, nn.Module):
            self.aggregator = aggregator
        elif in_dim is None:
            raise ConfigError("MILModule needs in_dim (the bags' feature width; the CLI links it from the data) or an encoder")
        else:
            self.aggregator = aggregator(in_dim, num_classes)
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.instance_loss_weight = instance_loss_weight
        self.grad_checkpointing = grad_checkpointing
        self.encoder_chunk = encoder_chunk
        self.standardize_features = standardize_features and encoder is None and in_dim is not None
        if self.standardize_features:
            self.register_buffer("feature_mean", torch.zeros(int(in_dim)))
            self.register_buffer("feature_std", torch.ones(int(in_dim)))
            self.register_buffer("feature_stats_ready", torch.tensor(False))

    def on_fit_start(self) -> None:
        """Take the training bags' statistics and the encoder record from the data (a resumed run keeps its own)."""
        data = getattr(self.trainer, "datamodule", None)
        if self.standardize_features and not bool(self.feature_stats_ready):
            if not hasattr(data, "feature_stats"):
                raise ConfigError("standardize_features needs a datamodule with feature_stats() (medconv.mil.MILDataModule); "
                                  "set model.init_args.standardize_features: false for other data")
            mean, std = data.feature_stats()
            self.feature_mean.copy_(mean)
            self.feature_std.copy_(std.clamp_min(1e-6))
            self.feature_stats_ready.fill_(True)
        if self.hparams.get("feature_encoder") is None and getattr(data, "encoder_info", None):
            self.hparams["feature_encoder"] = data.encoder_info
            self.hparams["feature_tiling"] = data.feature_tiling

    def forward(self, bag: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> MILOutput:
        """bag: features (B, N, D), or tiles (B, N, 3, H, W) with an encoder; mask (B, N) True on real instances."""
        if self.encoder is not None:
            features = self.encode(bag, mask)
        elif self.standardize_features:
            features = (bag - self.feature_mean.to(bag.dtype)) / self.feature_std.to(bag.dtype)
            if mask is not None:  # padding stays zero, as the aggregators expect
                features = features * mask.unsqueeze(-1).to(features.dtype)
        else:
            features = bag
        return self.aggregator(features, mask, labels)

    def encode(self, tiles: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3, H, W) tiles -> (B, N, F) features; padding is skipped and stays zero."""
        mask = full_mask(tiles, mask)
        chunks = tiles[mask].split(self.encoder_chunk)
        if self.grad_checkpointing and torch.is_grad_enabled():
            encoded = [checkpoint(self.encoder, c, use_reentrant=False) for c in chunks]
        else:
            encoded = [self.encoder(c) for c in chunks]
        flat = torch.cat(encoded)
        features = flat.new_zeros(*mask.shape, flat.shape[-1])
        features[mask] = flat
        return features

    def _bag(self, batch: dict) -> torch.Tensor:
        key = keys.IMAGE if self.encoder is not None else keys.FEATURES
        if key not in batch:
            raise ConfigError(
                f"MILModule {'with' if self.encoder is not None else 'without'} an encoder needs bags of "
                f"{'tiles (data bag_source: tiles)' if key == keys.IMAGE else 'features (data bag_source: features)'}"
            )
        return batch[key]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = batch[keys.LABEL]
        out = self(self._bag(batch), batch.get(keys.MASK), labels)
        loss = self.criterion(out.logits, labels)
        n = len(labels)
        if out.extra_loss is not None:
            self.log("train/bag_loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
            self.log("train/instance_loss", out.extra_loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
            loss = (1 - self.instance_loss_weight) * loss + self.instance_loss_weight * out.extra_loss
        log_train_loss(self, loss, n)  # no device sync between logging steps
        return loss

    # --- evaluation (epoch hooks and metrics: EvalRows) -----------------------------------------
    def _eval_step(self, batch: dict, prefix: str) -> None:
        logits = self(self._bag(batch), batch.get(keys.MASK)).logits
        self._record(prefix, logits, self.criterion(logits, batch[keys.LABEL]), batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per slide: probs (B, C) tensor, label, ids, and lists of per-slide arrays: attention (n,), coords (n, 2)
        (None when the bags have none) and instance_logits (n, C) (None unless the aggregator gives them)."""
        mask = full_mask(self._bag(batch), batch.get(keys.MASK))
        out = self(self._bag(batch), mask)
        sizes = mask.sum(1).tolist()

        def per_slide(values: torch.Tensor | None) -> list | None:
            return None if values is None else [v[:n].float().cpu().numpy() for v, n in zip(values, sizes, strict=True)]

        coords = batch.get(keys.COORDS)
        return {
            "probs": out.logits.float().softmax(1).cpu(),
            keys.LABEL: batch.get(keys.LABEL),
            **{k: batch[k] for k in META_KEYS if k in batch},
            "attention": per_slide(out.attention),
            keys.COORDS: None if coords is None else [c[:n].cpu().numpy() for c, n in zip(coords, sizes, strict=True)],
            "instance_logits": per_slide(out.instance_logits),
        }

    # --- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return optimization(self, params, self.optimizer_factory, self.scheduler_factory, self.scheduler_interval)
