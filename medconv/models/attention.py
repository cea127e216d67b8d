"""Attention-kernel control: every timm ViT family runs through `scaled_dot_product_attention`.

Why: at mammogram and large-tile resolution the N x N attention matrix is what runs out of memory; SDPA's
flash / memory-efficient kernels never build it. timm already uses SDPA where `fused_attn` is set (Swin's
is "experimental", so off by default, and caps the windows per call); SwinV2's cosine attention is
hand-written in timm; both get a replacement forward here, and Hiera's windowed stages pass 5-D tensors that only the math kernel takes,
so they are folded to 4-D here. The kernel choice (`attention: auto|flash|efficient|math`) is applied with
`torch.nn.attention.sdpa_kernel` around each attention module's forward, so it also holds when gradient
checkpointing recomputes that forward during backward (outside any context around the model's forward).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import set_fused_attn
from timm.models import hiera, swin_transformer, swin_transformer_v2
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionKernel = Literal["auto", "flash", "efficient", "math"]

KERNELS: dict[str, list[SDPBackend] | None] = {
    "auto": None,
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}


def sdpa_backends(attention: str) -> list[SDPBackend] | None:
    """The SDPA backends allowed for a configured `attention` value; None lets PyTorch choose."""
    if attention not in KERNELS:
        from medconv.errors import ConfigError

        raise ConfigError(f"attention={attention!r}: choose one of {', '.join(KERNELS)}.")
    return KERNELS[attention]


# CUDA caps a launch-grid dimension at 65,535: the fused kernels fail beyond that many windows in one call
# (measured: Swin-T at 2048x1024 stops near batch 23, 2,738 windows per image). Windows are independent, so
# splitting them into chunks is exact.
MAX_SDPA_BATCH = 32768


def windowed_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, **kwargs) -> torch.Tensor:
    """SDPA over (windows, heads, tokens, dim), in chunks of at most MAX_SDPA_BATCH windows."""
    n = q.shape[0]
    if n <= MAX_SDPA_BATCH:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)
    out = []
    for start in range(0, n, MAX_SDPA_BATCH):
        part = slice(start, min(n, start + MAX_SDPA_BATCH))
        mask = attn_mask if attn_mask is None or attn_mask.shape[0] == 1 else attn_mask[part]
        out.append(F.scaled_dot_product_attention(q[part], k[part], v[part], attn_mask=mask, **kwargs))
    return torch.cat(out)


def _window_mask(bias: torch.Tensor, mask: torch.Tensor | None, windows: int, tokens: int) -> torch.Tensor:
    """Position bias (1, heads, N, N) plus the shifted-window mask (num_win, N, N), broadcast over heads."""
    if mask is None:
        return bias
    num_win = mask.shape[0]
    mask = mask.view(1, num_win, 1, tokens, tokens).expand(windows // num_win, -1, -1, -1, -1)
    return bias + mask.reshape(windows, 1, tokens, tokens)


class SdpaWindowAttention(swin_transformer.WindowAttention):
    """Swin (v1) window attention through `windowed_sdpa`: timm's fused path, with the shift mask broadcast over
    heads instead of copied per head, and any number of windows. Same parameters and state dict as timm's."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = _window_mask(self._get_rel_pos_bias(), mask, B_, N)
        x = windowed_sdpa(q, k, v, attn_mask.to(q.dtype), dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, -1)))


class SdpaWindowAttentionV2(swin_transformer_v2.WindowAttention):
    """SwinV2 window attention (cosine similarity, per-head logit scale, continuous position bias) via SDPA.

    softmax(cos(q, k) * s + b + m) v == SDPA(normalize(q) * s, normalize(k), v, attn_mask=b + m, scale=1):
    the logit scale is folded into q and the bias and shift mask travel as `attn_mask`, so the memory-
    efficient kernels (and flash on CPU) apply. Same parameters and state dict as timm's module.
    """

    def _position_bias(self) -> torch.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        area = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index.view(-1)].view(area, area, -1).permute(2, 0, 1)
        # contiguous: a permuted bias has last-dim stride nH, which CUDA's fused kernels refuse ("No available
        # kernel" for efficient; silent math fallback for auto), measured on an H200.
        return (16 * torch.sigmoid(bias)).contiguous().unsqueeze(0)  # 1, nH, N, N

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:
            qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
            if self.qkv_bias_separate:
                qkv = self.qkv(x) + qkv_bias
            else:
                qkv = F.linear(x, weight=self.qkv.weight, bias=qkv_bias)
        q, k, v = qkv.reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()  # nH, 1, 1
        q = F.normalize(q, dim=-1) * logit_scale
        k = F.normalize(k, dim=-1)
        attn_mask = _window_mask(self._position_bias(), mask, B_, N)
        dropout = self.attn_drop.p if self.training else 0.0
        x = windowed_sdpa(q, k, v.to(q.dtype), attn_mask.to(q.dtype), dropout_p=dropout, scale=1.0)
        x = x.transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))


class SdpaMaskUnitAttention(hiera.MaskUnitAttention):
    """Hiera attention whose mask-unit (windowed) path reaches the fused kernels.

    timm passes 5-D (B, heads, windows, tokens, dim) tensors to SDPA in the windowed stages, which only the
    math kernel accepts (and `attention: flash` fails); windows are folded into the head dimension here.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_mask_unit_attn:
            return super().forward(x)
        B, N, _ = x.shape
        num_windows = N // (self.q_stride * self.window_size)
        qkv = self.qkv(x).reshape(B, -1, num_windows, 3, self.heads, self.head_dim).permute(3, 0, 4, 2, 1, 5)
        q, k, v = qkv.unbind(0)  # B, heads, windows, tokens, head_dim
        if self.q_stride > 1:
            q = q.view(B, self.heads, num_windows, self.q_stride, -1, self.head_dim).amax(dim=3)
        heads_windows = self.heads * num_windows
        x = F.scaled_dot_product_attention(
            q.reshape(B, heads_windows, -1, self.head_dim),
            k.reshape(B, heads_windows, -1, self.head_dim),
            v.reshape(B, heads_windows, -1, self.head_dim),
        )
        x = x.view(B, self.heads, num_windows, -1, self.head_dim).transpose(1, 3).reshape(B, -1, self.dim_out)
        return self.proj(x)


REPLACEMENTS: dict[type, type] = {
    swin_transformer.WindowAttention: SdpaWindowAttention,
    swin_transformer_v2.WindowAttention: SdpaWindowAttentionV2,
    hiera.MaskUnitAttention: SdpaMaskUnitAttention,
}


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a timm model: those with timm's `fused_attn` switch, and SwinV2's."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "fused_attn") or isinstance(m, swin_transformer_v2.WindowAttention)
    ]


def use_sdpa(model: nn.Module) -> int:
    """Route every attention module of `model` through SDPA; returns how many there are.

    Sets timm's global switch (for models built later) and each module's own flag (for this one, whatever
    the global state was at its construction), and swaps in the rewrites above (same parameters and state
    dict) where timm's own path would not reach SDPA's fused kernels.
    """
    set_fused_attn(True, experimental=True)
    modules = attention_modules(model)
    for module in modules:
        if type(module) in REPLACEMENTS:
            module.__class__ = REPLACEMENTS[type(module)]
        if hasattr(module, "fused_attn"):
            module.fused_attn = True
    return len(modules)


class KernelScope:
    """Forward pre/post hooks that hold `sdpa_kernel(backends)` while one attention module runs.

    A hook pair rather than a context around the model: checkpointed blocks re-run their forward inside
    backward, where a context around the model's forward is long gone, and a different kernel on
    recomputation would change the saved tensors.
    """

    def __init__(self, attention: str):
        self.backends = sdpa_backends(attention)
        self._active: list = []

    def enter(self, module: nn.Module, args: tuple) -> None:
        if self.backends is None:
            return
        ctx = sdpa_kernel(self.backends)
        ctx.__enter__()
        self._active.append(ctx)

    def exit(self, module: nn.Module, args: tuple, output: object) -> None:
        if self._active:
            self._active.pop().__exit__(None, None, None)

    def context(self):
        """The same kernel choice as a context manager, for code outside the attention modules."""
        from contextlib import nullcontext

        return nullcontext() if self.backends is None else sdpa_kernel(self.backends)


def scope_attention_kernel(model: nn.Module, attention: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Apply the `attention` kernel choice to every attention module of `model`; returns the hook handles."""
    scope = KernelScope(attention)
    handles = []
    for module in attention_modules(model):
        handles.append(module.register_forward_pre_hook(scope.enter))
        handles.append(module.register_forward_hook(scope.exit, always_call=True))
    return handles
