"""SparK-style sparse masked forward for CNNs (ConvNeXt, ResNet-D, GResNet), on the backbone's own modules.

A dense CNN run on a zero-filled image lets visible features drift towards the mask border with depth (every
3x3 or 7x7 conv reads its neighbours) and lets BatchNorm average the masked zeros into its statistics. While
a masked forward runs, this module makes the CNN behave as if the masked cells were absent:

- every op that mixes positions (convs other than 1x1/stride 1, max/avg pools) gets its input zeroed at masked
  positions by a forward pre-hook, exactly like zero padding around the visible region;
- every BatchNorm (also the input BatchNorm of GResNet's split norm) in train mode computes its batch statistics,
  and updates its running statistics, over visible positions only;
- per-position ops (LayerNorm2d, 1x1 convs, activations, residual adds) need nothing: what they compute at
  masked positions never reaches a visible one, since the next mixing op zeroes it again.

Consequence (tested): the features of a visible cell equal those of the dense network run on the visible region
alone, and the masked pixels cannot change any visible output. Hooks and the BatchNorm forwards are installed
only for the duration of the masked forward (and re-installed during backward, for recomputation under gradient
checkpointing); no module is replaced, so the state_dict keeps timm's keys.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.autograd import Function, Variable
from torch.nn.modules.batchnorm import _BatchNorm

from medconv.errors import ConfigError
from medconv.models import TimmBackbone
from medconv.ssl.masking import MASK_STRIDE, grid_shape, upsample_mask

SPARSE_FAMILIES = ("convnext", "resnet", "gresnet")
# modules that mix all positions of a map: a sparse forward would let masked content into their statistics
_GLOBAL_MIXERS = ("GroupNorm", "InstanceNorm", "GlobalResponseNorm", "SEModule", "EffectiveSEModule", "SqueezeExcite",
                  "EcaModule", "CecaModule", "CbamModule", "LightCbamModule", "GatherExcite", "GlobalContext")


class SparseMasking:
    """The mask of the running forward, at every resolution the network asks for (cached per size)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.spatial = [m for m in model.modules() if _mixes_positions(m)]
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        self.enabled = True  # tests switch it off to show that the leak test can fail
        self._visible: torch.Tensor | None = None
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._handles: list = []

    def visible(self, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, h, w) 1 at visible positions, in `dtype`."""
        key = (int(size[0]), int(size[1]))
        if key not in self._cache:
            self._cache[key] = upsample_mask(self._visible, key)
        return self._cache[key].to(dtype)

    def install(self, mask: torch.Tensor) -> None:
        """Hooks on, for a (B, gh, gw) bool mask (True = masked)."""
        if self._handles:
            return
        self._visible, self._cache = ~mask, {}
        if not self.enabled:
            self._handles = [None]
            return
        self._handles = [m.register_forward_pre_hook(self._zero_input) for m in self.spatial]
        for bn in self.norms:
            bn.forward = partial(_visible_batch_norm, bn, self)  # instance attribute: no module is replaced
        self._handles.append(None)

    def remove(self) -> None:
        for handle in self._handles:
            if handle is not None:
                handle.remove()
        if self._handles and self.enabled:
            for bn in self.norms:
                bn.__dict__.pop("forward", None)
        self._handles = []

    @contextmanager
    def active(self, mask: torch.Tensor):
        self.install(mask)
        try:
            yield self
        finally:
            self.remove()

    def _zero_input(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * self.visible(x.shape[-2:], x.dtype), *args[1:])


def _mixes_positions(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return tuple(module.kernel_size) != (1, 1) or tuple(module.stride) != (1, 1)
    return isinstance(module, nn.MaxPool2d | nn.AvgPool2d)


def _visible_batch_norm(bn: _BatchNorm, masking: SparseMasking, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm whose batch (and running) statistics cover visible positions only; eval mode is unchanged."""
    if not (bn.training or not bn.track_running_stats):
        return type(bn).forward(bn, x)  # running statistics: per-position, nothing to hide
    vis = masking.visible(x.shape[-2:], torch.float32)
    count = vis.sum()  # visible positions over (B, H, W): the per-channel sample count
    xf = x.float()
    mean = (xf * vis).sum(dim=(0, 2, 3)) / count
    centred = xf - mean.view(1, -1, 1, 1)
    var = (centred.square() * vis).sum(dim=(0, 2, 3)) / count
    if bn.training and bn.track_running_stats:
        _update_running(bn, mean.detach(), var.detach(), count)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    y = centred * scale.view(1, -1, 1, 1)
    if bn.bias is not None:
        y = y + bn.bias.float().view(1, -1, 1, 1)
    y = y.to(x.dtype)
    if hasattr(bn, "act"):  # timm's BatchNormAct2d folds its activation into the norm
        y = bn.act(bn.drop(y))
    return y


@torch.no_grad()
def _update_running(bn: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
    """As nn.BatchNorm: momentum (or the cumulative average when None), unbiased variance (no host sync)."""
    bn.num_batches_tracked.add_(1)
    # the cumulative average's weight stays a device tensor: float(num_batches_tracked) would wait for the device
    momentum = bn.momentum if bn.momentum is not None else (1.0 / bn.num_batches_tracked).to(bn.running_mean.dtype)
    unbiased = var * (count / (count - 1.0).clamp_min(1.0))
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
    bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)


class _KeepMaskForBackward(Function):
    """Identity whose backward re-installs the hooks until the backward pass ends: recomputed checkpointed
    stages then see the same sparse forward as the original one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, masking: SparseMasking, mask: torch.Tensor) -> torch.Tensor:
        ctx.masking, ctx.mask = masking, mask
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.masking.install(ctx.mask)
        Variable._execution_engine.queue_callback(ctx.masking.remove)
        return grad, None, None


class SparseCNNEncoder(nn.Module):
    """Masked forward of a timm CNN held by reference (its weights stay the backbone's, under its own keys)."""

    stride = MASK_STRIDE

    def __init__(self, backbone: TimmBackbone):
        super().__init__()
        if backbone.family not in SPARSE_FAMILIES:
            raise ConfigError(f"{backbone.name}: sparse masking supports {SPARSE_FAMILIES}, not {backbone.family}.")
        mixers = sorted({type(m).__name__ for m in backbone.model.modules() if type(m).__name__ in _GLOBAL_MIXERS})
        if mixers:
            raise ConfigError(
                f"{backbone.name}: its {', '.join(mixers)} layers pool over all positions, so masked pixels would "
                "leak into visible features; pick a variant without them (convnext_*, resnet*d, gresnet*)."
            )
        reductions = [info["reduction"] for info in backbone.feature_info]
        if reductions and reductions[-1] != MASK_STRIDE:
            raise ConfigError(f"{backbone.name}: final stride {reductions[-1]}, masked modelling needs {MASK_STRIDE}.")
        self.__dict__["backbone"] = backbone  # by reference: not a submodule, so no duplicate state_dict keys
        self.masking = SparseMasking(backbone.model)
        self.out_channels = backbone.num_features
        if backbone.img_size is not None:
            grid_shape(backbone.img_size)

    def _run(self, x: torch.Tensor, mask: torch.Tensor, fn) -> list[torch.Tensor]:
        grid_shape(x.shape[-2:])
        with self.masking.active(mask):
            feats = fn(x)
        out = []
        for f in feats:  # masked cells of every map read 0, as in SparK; re-hooked for backward recomputation
            f = f * upsample_mask(~mask, f.shape[-2:]).to(f.dtype)
            if torch.is_grad_enabled() and f.requires_grad:
                f = _KeepMaskForBackward.apply(f, self.masking, mask)
            out.append(f)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H/32, W/32) final features for a (B, gh, gw) mask (True = masked); masked cells are 0."""
        return self._run(x, mask, lambda t: [self.backbone.forward_features(t)])[0]

    def pyramid(self, x: torch.Tensor, mask: torch.Tensor, indices: list[int] | None = None) -> list[torch.Tensor]:
        """The NCHW maps of the stages at `indices` (all by default) under the same sparse forward, masked cells 0."""
        return self._run(x, mask, lambda t: self.backbone.feature_maps(t, indices))
