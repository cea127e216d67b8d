"""GResNet: ResNet-d with SiLU and split normalisation, registered with timm (`timm.create_model("gresnet50")`).

From "Vision Transformers are Overrated" (2024; see seeds-notes): three 3x3 stem convs (32/64/128, stride 2
on the first) and no max pool — the first block of the first stage downsamples instead —; the stride on the
3x3 conv of downsampling blocks; 2x2 average pool + 1x1 conv shortcuts; SiLU; every conv normalises its
input without affine and applies a learnable per-channel affine to its output (`SplitNormConv2d`).
`GResNet.fuse()` folds both into the convs for inference, exactly (borders included) and in place.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, calculate_drop_path_rates, get_act_layer
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from medconv.models.split_norm import SplitNormConv2d

__all__ = ["GResNet", "BasicBlock", "Bottleneck"]


class Shortcut(nn.Module):
    """ResNet-d projection: 2x2 average pool (only when striding), then a 1x1 split-norm conv."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        # ceil_mode keeps odd sizes aligned with the 3x3/stride-2 conv of the residual branch
        self.pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        self.conv = SplitNormConv2d(in_chs, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    return Shortcut(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 split-norm convs (the first strides)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int, act_layer: type[nn.Module], drop_path: float):
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = SplitNormConv2d(in_chs, planes, 3, stride)
        self.act1 = act_layer(inplace=True)
        self.conv2 = SplitNormConv2d(planes, out_chs, 3)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcut = _shortcut(in_chs, out_chs, stride)
        self.act2 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.affine.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.conv1(x))
        x = self.drop_path(self.conv2(x)) + shortcut
        return self.act2(x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strides, ResNet-b/d) -> 1x1 with 4x expansion, split-norm convs."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int, act_layer: type[nn.Module], drop_path: float):
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = SplitNormConv2d(in_chs, planes, 1)
        self.act1 = act_layer(inplace=True)
        self.conv2 = SplitNormConv2d(planes, planes, 3, stride)
        self.act2 = act_layer(inplace=True)
        self.conv3 = SplitNormConv2d(planes, out_chs, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcut = _shortcut(in_chs, out_chs, stride)
        self.act3 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.affine.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.drop_path(self.conv3(x)) + shortcut
        return self.act3(x)


class Stem(nn.Module):
    """Three 3x3 split-norm convs, stride 2 on the first; no max pool (stage 1 strides instead)."""

    def __init__(self, in_chans: int, chs: tuple[int, int, int], act_layer: type[nn.Module]):
        super().__init__()
        self.conv1 = SplitNormConv2d(in_chans, chs[0], 3, stride=2)
        self.act1 = act_layer(inplace=True)
        self.conv2 = SplitNormConv2d(chs[0], chs[1], 3)
        self.act2 = act_layer(inplace=True)
        self.conv3 = SplitNormConv2d(chs[1], chs[2], 3)
        self.act3 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.act3(self.conv3(x))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class GResNet(nn.Module):
    """ResNet-d + SiLU + split normalisation; answers timm's model API (features, head, checkpointing)."""

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        block: str = "bottleneck",
        stem_chs: tuple[int, int, int] = (32, 64, 128),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        act_layer: str = "silu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ):
        super().__init__()
        block_cls = BLOCKS[block]
        act = get_act_layer(act_layer)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.fused = False

        self.stem = Stem(in_chans, tuple(stem_chs), act)
        self.feature_info = [dict(num_chs=stem_chs[-1], reduction=2, module="stem")]
        dpr = iter(calculate_drop_path_rates(drop_path_rate, sum(layers)))
        in_chs, reduction, stages = stem_chs[-1], 2, []
        for i, (depth, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if j == 0 else 1  # every stage downsamples, the first one replacing the max pool
                blocks.append(block_cls(in_chs, planes, stride, act, next(dpr)))
                in_chs = planes * block_cls.expansion
            reduction *= 2
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (high-resolution inputs).

        BatchNorm running statistics are updated again during the recomputation, as in every timm CNN.
        """
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "head.fc" if name_only else self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    @torch.no_grad()
    def fuse(self) -> GResNet:
        """Fold every split norm into its conv, in place, for inference (uses the running statistics).

        The fused model gives the eval-mode outputs of the unfused one; it cannot be trained further as a
        GResNet (there are no statistics left to update). `timm.utils.reparameterize_model` does the same.
        """
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, SplitNormConv2d):
                    setattr(parent, name, child.fuse())
        self.fused = True
        return self

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-feature API: index 0 is the stem (stride 2), 1-4 the stages."""
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            x = self._run_stage(stage, x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = ClassifierHead(self.num_features, 0, pool_type="")
        elif prune_head:
            self.reset_classifier(0, "")
        return take_indices


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """No weights are published: the cfg carries input size and normalisation for training from scratch."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "gresnet_tiny": _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
        "gresnet18": _cfg(),
        "gresnet26": _cfg(),
        "gresnet50": _cfg(test_input_size=(3, 224, 224)),
        "gresnet101": _cfg(),
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> GResNet:
    return build_model_with_cfg(
        GResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3, 4), flatten_sequential=True), **kwargs
    )


@register_model
def gresnet_tiny(pretrained: bool = False, **kwargs: Any) -> GResNet:
    """A ~0.4M-parameter GResNet for tests and CPU demos (basic blocks, one per stage)."""
    args = dict(layers=(1, 1, 1, 1), block="basic", stem_chs=(8, 16, 16), widths=(16, 32, 64, 128))
    return _create("gresnet_tiny", pretrained, **dict(args, **kwargs))


@register_model
def gresnet18(pretrained: bool = False, **kwargs: Any) -> GResNet:
    return _create("gresnet18", pretrained, **dict(dict(layers=(2, 2, 2, 2), block="basic"), **kwargs))


@register_model
def gresnet26(pretrained: bool = False, **kwargs: Any) -> GResNet:
    return _create("gresnet26", pretrained, **dict(dict(layers=(2, 2, 2, 2), block="bottleneck"), **kwargs))


@register_model
def gresnet50(pretrained: bool = False, **kwargs: Any) -> GResNet:
    """The GResNet of the blog post: 25.7M parameters."""
    return _create("gresnet50", pretrained, **dict(dict(layers=(3, 4, 6, 3), block="bottleneck"), **kwargs))


@register_model
def gresnet101(pretrained: bool = False, **kwargs: Any) -> GResNet:
    return _create("gresnet101", pretrained, **dict(dict(layers=(3, 4, 23, 3), block="bottleneck"), **kwargs))
