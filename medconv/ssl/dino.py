"""DINO self-distillation (Caron et al. 2021) for any timm backbone: CNNs and hierarchical ViTs alike.

The student (the backbone being trained + a projection head) sees every crop; an EMA teacher (a deep copy of
both, never given gradients) sees the global crops only. The loss is the cross-entropy between the teacher's
centred, sharpened distribution for one global crop and the student's distribution for every *other* crop.
Centring (subtracting a running mean of teacher logits, all-reduced across processes under DDP) and sharpening
(a low teacher temperature) together keep the teacher from collapsing to one prototype or to uniform output.

Local crops and fixed-size models: CNNs and PVT-v2 take any input size, as do ViT/Swin/SwinV2 built with
`dynamic_img_size: true` (recommended for DINO: local crops then cost what their size says). Models built for one
size (Hiera always; ViT/Swin without dynamic_img_size) cannot take a 96 px crop: `fixed_size_local_crops`
decides whether such crops are resized up to the model's size ("resize", default: the local-to-global task is
kept at the price of global-size compute per local crop) or left out ("drop": global crops only, 2-view DINO).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medconv import keys
from medconv.errors import ConfigError
from medconv.ssl.heads import DINOHead


def dino_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], centre: torch.Tensor, student_temp: float, teacher_temp: float
) -> torch.Tensor:
    """Mean over (global crop i, crop v != i) pairs of the batch-mean cross-entropy H(teacher_i, student_v).

    `student`: logits (B, K) per crop, global crops first, in the same order as `teacher`'s (B, K) per global crop.
    """
    targets = [F.softmax((t.float() - centre) / teacher_temp, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total, pairs = 0.0, 0
    for i, target in enumerate(targets):
        for v, log_p in enumerate(log_probs):
            if v == i:
                continue
            total = total + torch.sum(-target * log_p, dim=-1).mean()
            pairs += 1
    if pairs == 0:
        raise ConfigError("DINO needs at least two crops per image (two global crops, or one global and local crops)")
    return total / pairs


@torch.no_grad()
def updated_centre(centre: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the teacher's batch-mean logits; the mean is over every process's batch when DDP is running."""
    logits = teacher_logits.float()
    # the sum and the sample count in one tensor: one all-reduce per step (DINO's only collective besides DDP's)
    stats = torch.cat([logits.sum(dim=0), logits.new_full((1,), logits.shape[0])])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    return centre * momentum + (stats[:-1] / stats[-1]).unsqueeze(0) * (1 - momentum)


@torch.no_grad()
def ema_update(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place."""
    torch._foreach_lerp_(teacher, [s.detach() for s in student], 1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """`base` at step 0 rising to 1 at `total_steps` along a half cosine (DINO's teacher momentum schedule)."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def teacher_temperature(step: int, total_steps: int, warmup_temp: float, temp: float, warmup_fraction: float) -> float:
    """Linear warm-up from `warmup_temp` to `temp` over the first `warmup_fraction` of training, then constant."""
    warmup = warmup_fraction * total_steps
    if warmup_fraction <= 0:
        return temp
    if total_steps <= 0 or step < warmup:
        return warmup_temp + (temp - warmup_temp) * (max(step, 0) / warmup if warmup > 0 else 0.0)
    return temp


def fixed_input_size(backbone: nn.Module) -> tuple[int, int] | None:
    """The only (H, W) a backbone accepts, or None when it takes any size (CNNs, PVT-v2, dynamic ViT/Swin)."""
    model = getattr(backbone, "model", backbone)
    model = getattr(model, "_orig_mod", model)
    if getattr(model, "dynamic_img_size", False):
        return None
    tokens = getattr(model, "tokens_spatial_shape", None)  # Hiera: unrolled mask units fix the token grid
    if tokens is not None:
        stride = getattr(model, "patch_stride", (1, 1))
        return tuple(int(t) * int(s) for t, s in zip(tokens, stride, strict=True))
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "strict_img_size", False) and getattr(embed, "img_size", None) is not None:
        return tuple(int(s) for s in embed.img_size)
    return None


class DINO(nn.Module):
    """Self-distillation with an EMA teacher, centring and sharpening; `export_encoder()` is the teacher backbone.

    Args:
        backbone: the student encoder (`medconv.models.TimmBackbone`); its modules are used as they are.
        out_dim, hidden_dim, bottleneck_dim: projection head (prototypes, MLP width, L2-normalised bottleneck).
        n_global: how many of the batch's crops (first in `batch["crops"]`) are global crops the teacher sees.
        student_temp: student softmax temperature.
        teacher_temp, warmup_teacher_temp, teacher_temp_warmup: teacher temperature, warmed up linearly from
            `warmup_teacher_temp` over the first `teacher_temp_warmup` fraction of the optimiser steps.
        centre_momentum: EMA momentum of the centre.
        momentum: teacher EMA momentum at the start; it rises to 1 along a cosine over training.
        fixed_size_local_crops: "resize" or "drop" local crops that a fixed-size model cannot take (see module doc).
    """

    def __init__(
        self,
        backbone: nn.Module,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_global: int = 2,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        centre_momentum: float = 0.9,
        momentum: float = 0.996,
        fixed_size_local_crops: Literal["resize", "drop"] = "resize",
    ):
        super().__init__()
        if n_global < 1:
            raise ConfigError(f"DINO: n_global must be at least 1, not {n_global}")
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ConfigError("DINO: temperatures must be positive")
        if not (0 <= momentum <= 1 and 0 <= centre_momentum <= 1 and 0 <= teacher_temp_warmup <= 1):
            raise ConfigError("DINO: momentum, centre_momentum and teacher_temp_warmup must lie in [0, 1]")
        if fixed_size_local_crops not in ("resize", "drop"):
            raise ConfigError(f"DINO: fixed_size_local_crops must be 'resize' or 'drop', not {fixed_size_local_crops!r}")
        self.backbone = backbone
        self.head = DINOHead(backbone.num_features, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in (*self.teacher_backbone.parameters(), *self.teacher_head.parameters()):
            p.requires_grad_(False)
        if hasattr(self.teacher_backbone, "set_grad_checkpointing"):
            self.teacher_backbone.set_grad_checkpointing(False)  # never backpropagated: recomputing would only cost
        self.n_global = n_global
        self.student_temp = student_temp
        self.teacher_temp, self.warmup_teacher_temp, self.teacher_temp_warmup = teacher_temp, warmup_teacher_temp, teacher_temp_warmup
        self.centre_momentum = centre_momentum
        self.base_momentum = momentum
        self.fixed_size_local_crops = fixed_size_local_crops
        self.fixed_size = fixed_input_size(backbone)
        self.register_buffer("centre", torch.zeros(1, out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # saved with checkpoints: schedules resume
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))
        # host copies of step/total_steps: the temperature schedule reads them every forward, the buffers would sync
        self._host_steps = (0, 0)
        self.register_load_state_dict_post_hook(_steps_to_host)

    # --- the objective --------------------------------------------------------------------------
    def current_teacher_temp(self) -> float:
        step, total = self._host_steps
        return teacher_temperature(step, total, self.warmup_teacher_temp, self.teacher_temp, self.teacher_temp_warmup)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        crops = batch.get(keys.CROPS) if isinstance(batch, dict) else None
        if not crops:
            raise ConfigError("DINO needs multi-crop batches (batch['crops']); set the pretraining data's views: crops")
        if len(crops) < self.n_global:
            raise ConfigError(f"DINO: n_global={self.n_global} but the batch has {len(crops)} crops; set n_global in the data too")
        global_crops = [self._check_global(c) for c in crops[: self.n_global]]
        local_crops = self._fit_locals(list(crops[self.n_global :]))
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(global_crops))).float()
        student = self._student(global_crops + local_crops)
        temp = self.current_teacher_temp()
        teacher_chunks = list(teacher.chunk(self.n_global))
        loss = dino_loss(student, teacher_chunks, self.centre, self.student_temp, temp)
        with torch.no_grad():
            probs = F.softmax((teacher - self.centre) / temp, dim=-1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            if self.training:
                self.centre.copy_(updated_centre(self.centre, teacher, self.centre_momentum))
        return {"loss": loss, "teacher_temp": torch.tensor(temp), "teacher_entropy": entropy}

    def _student(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student logits per crop; consecutive crops of one size go through the backbone as one batch."""
        out: list[torch.Tensor] = []
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape == crops[start].shape:
                end += 1
            logits = self.head(self.backbone(torch.cat(crops[start:end])))
            out += list(logits.chunk(end - start))
            start = end
        return out

    def _check_global(self, crop: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is not None and tuple(crop.shape[-2:]) != self.fixed_size:
            raise ConfigError(
                f"DINO: global crops are {tuple(crop.shape[-2:])} but {getattr(self.backbone, 'name', 'the backbone')} is built "
                f"for {self.fixed_size}; set the backbone's img_size to the data's image_size (or dynamic_img_size: true)"
            )
        return crop

    def _fit_locals(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.fixed_size is None or not crops:
            return crops
        if self.fixed_size_local_crops == "drop":
            return []
        return [c if tuple(c.shape[-2:]) == self.fixed_size else
                F.interpolate(c, size=self.fixed_size, mode="bilinear", align_corners=False) for c in crops]

    # --- teacher ---------------------------------------------------------------------------------
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA teacher update with the cosine momentum for `step` (optimiser steps taken) of `total_steps`."""
        momentum = cosine_momentum(step, total_steps, self.base_momentum)
        student = [*self.backbone.parameters(), *self.head.parameters()]
        teacher = [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]
        ema_update(teacher, student, momentum)
        self._host_steps = (int(step), int(total_steps))
        self.step.fill_(int(step))
        self.total_steps.fill_(int(total_steps))

    def export_encoder(self) -> nn.Module:
        """The teacher's backbone: DINO's evaluated (and exported) network is the teacher."""
        return self.teacher_backbone


def _steps_to_host(module: DINO, incompatible_keys) -> None:
    """After a checkpoint restores the step buffers: read them once, so the schedules resume where they were."""
    module._host_steps = (int(module.step), int(module.total_steps))
