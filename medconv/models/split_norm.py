"""Split normalisation (GResNet): BatchNorm without affine before a conv, a per-channel affine after it.

Both parts are diagonal, so for inference they fold into the conv (`SplitNormConv2d.fuse`). The fold is
exact only with care at the borders: the unfused conv zero-pads the *normalised* input, i.e. pads the raw
input with the running mean, while a fused conv on the raw input pads with 0. `FusedConv2d` adds back the
difference, which is non-zero only on the output rows/columns whose window reaches into the padding; it
is computed once per input size from thin border strips (cheap even for 2048x1024 inputs) and cached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import create_conv2d
from torch import nn

Strip = tuple[slice, slice, torch.Tensor]  # output rows, output cols, correction to add there


class ChannelAffine(nn.Module):
    """Learnable per-channel scale and shift of an NCHW tensor: the affine half of a split BatchNorm."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in x's dtype: under autocast the activations stay bf16/fp16 instead of being promoted to fp32
        w, b = self.weight.to(x.dtype).view(1, -1, 1, 1), self.bias.to(x.dtype).view(1, -1, 1, 1)
        return torch.addcmul(b, x, w)


class SplitNormConv2d(nn.Module):
    """`norm` (BatchNorm2d, affine=False) on the conv's input, then `conv` (no bias), then `affine`."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs, eps=eps, affine=False)
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride=stride, bias=False)
        self.affine = ChannelAffine(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(self.conv(self.norm(x)))

    @torch.no_grad()
    def adapt_input_state(self, state: dict[str, torch.Tensor], prefix: str, in_chans: int) -> list[str]:
        """Adapt this module's entries of `state` (RGB weights, before timm's `adapt_input_conv` sums or repeats
        `conv.weight`) to `in_chans` inputs; returns what was changed, for the weight report.

        For 1 channel the RGB scales 1/std_c go into the conv weights before they are summed and the mean
        differences into the affine bias: a grey image gives the RGB model's answer on it repeated, exactly when
        the channel means agree and otherwise away from the zero padding. More channels repeat the statistics
        as the weights are repeated.
        """
        mean_key, var_key = f"{prefix}.norm.running_mean", f"{prefix}.norm.running_var"
        conv_key, bias_key, scale_key = f"{prefix}.conv.weight", f"{prefix}.affine.bias", f"{prefix}.affine.weight"
        mean, var, weight = state.get(mean_key), state.get(var_key), state.get(conv_key)
        if mean is None or var is None or weight is None or len(mean) != weight.shape[1]:
            return []
        change = f"{tuple(mean.shape)} -> ({in_chans},)"
        if in_chans != 1:
            index = torch.arange(in_chans) % len(mean)
            state[mean_key], state[var_key] = mean[index], var[index]
            return [f"{mean_key}: {change} repeated", f"{var_key}: {change} repeated"]
        new_mean, new_var = mean.double().mean(), var.double().mean()
        scaled = weight.double() / (var.double() + self.norm.eps).sqrt().view(1, -1, 1, 1)
        state[conv_key] = (scaled * (new_var + self.norm.eps).sqrt()).to(weight.dtype)
        state[mean_key], state[var_key] = new_mean.view(1).to(mean.dtype), new_var.view(1).to(var.dtype)
        done = [f"{mean_key}: {change} averaged", f"{var_key}: {change} averaged, scales folded into the conv"]
        if bool((mean != mean[0]).any()) and bias_key in state and scale_key in state:
            shift = (scaled * (new_mean - mean.double()).view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
            state[bias_key] = (state[bias_key].double() + state[scale_key].double() * shift).to(state[bias_key].dtype)
            done.append(f"{bias_key}: RGB mean differences folded in")
        return done

    @torch.no_grad()
    def fuse(self) -> FusedConv2d:
        """One conv with bias equal to this module in eval mode (running statistics), borders included."""
        conv, norm, affine = self.conv, self.norm, self.affine
        if conv.groups != 1:
            raise NotImplementedError("fusing grouped convs is not implemented")
        dtype = conv.weight.dtype
        mean = norm.running_mean.double()
        inv_std = (norm.running_var.double() + norm.eps).rsqrt()
        scale = affine.weight.double()
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1) * inv_std.view(1, -1, 1, 1)
        bias = affine.bias.double() - (weight.sum(dim=(2, 3)) * mean.view(1, -1)).sum(dim=1)
        fused = FusedConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            pad_value=mean.to(dtype),
        ).to(device=conv.weight.device, dtype=dtype)
        fused.weight.copy_(weight.to(dtype))
        fused.bias.copy_(bias.to(dtype))
        fused.train(self.training)
        return fused


class FusedConv2d(nn.Conv2d):
    """A conv that zero-pads its input but answers as if it had padded each channel with `pad_value`."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        pad_value: torch.Tensor,
    ):
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=True)
        self.register_buffer("pad_value", pad_value.detach().clone().reshape(in_chs))
        self._border_cache: dict[tuple, list[Strip]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if not any(self.padding):
            return out
        for rows, cols, strip in self._border(x.shape[-2], x.shape[-1], x.device, x.dtype):
            out[:, :, rows, cols] += strip
        return out

    def _apply(self, fn, recurse: bool = True):
        self._border_cache.clear()  # device or dtype change: strips are recomputed from the new weights
        return super()._apply(fn, recurse)

    def _border(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> list[Strip]:
        key = (h, w, device, dtype, self.weight._version, self.pad_value._version)
        if key not in self._border_cache:
            if len(self._border_cache) > 16:
                self._border_cache.clear()
            with torch.no_grad():
                self._border_cache[key] = self._border_strips(h, w)
        return self._border_cache[key]

    def _border_strips(self, h: int, w: int) -> list[Strip]:
        """Corrections for the output rows/columns whose window reaches the padding, as (rows, cols, strip)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        row_bands, mid_rows = _bands(h, out_h, kh, sh, ph, dh)
        col_bands, _ = _bands(w, out_w, kw, sw, pw, dw)
        pieces = [(r, (0, out_w)) for r in row_bands]
        if mid_rows is not None:
            pieces += [(mid_rows, c) for c in col_bands]
        strips = []
        for (r0, r1), (c0, c1) in pieces:
            if r1 <= r0 or c1 <= c0:
                continue
            rows = (r0 * sh, (r1 - 1) * sh + dh * (kh - 1) + 1)  # the padded-input window they read
            cols = (c0 * sw, (c1 - 1) * sw + dw * (kw - 1) + 1)
            frame = self._mean_frame(h, w, rows, cols)
            strip = F.conv2d(frame, self.weight, None, self.stride, 0, self.dilation)
            strips.append((slice(r0, r1), slice(c0, c1), strip))
        if 2 * sum(st.shape[-2] * st.shape[-1] for *_, st in strips) >= out_h * out_w:
            # small maps are mostly border: one whole-map add beats several strided ones
            full = self.weight.new_zeros(1, self.out_channels, out_h, out_w)
            for rows, cols, strip in strips:
                full[:, :, rows, cols] = strip
            strips = [(slice(None), slice(None), full)]
        return strips

    def _mean_frame(self, h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """A window (in padded coordinates) of the input 0 inside the image and `pad_value` in the padding."""
        (ph, pw) = self.padding
        frame = self.pad_value.view(1, -1, 1, 1).expand(1, -1, rows[1] - rows[0], cols[1] - cols[0]).clone()
        i0, i1 = max(ph, rows[0]) - rows[0], min(ph + h, rows[1]) - rows[0]
        j0, j1 = max(pw, cols[0]) - cols[0], min(pw + w, cols[1]) - cols[0]
        if i1 > i0 and j1 > j0:
            frame[:, :, i0:i1, j0:j1] = 0
        return frame.to(self.weight.dtype)


def _bands(size: int, out: int, k: int, s: int, p: int, d: int) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """Output index ranges touching the leading/trailing padding, and the range in between (None if empty)."""
    lead = min(out, math.ceil(p / s))  # i * s - p < 0
    trail = max(lead, min(out, math.ceil((size + p - d * (k - 1)) / s)))  # i * s - p + d * (k - 1) >= size
    if trail <= lead:
        return [(0, out)], None
    return [(0, lead), (trail, out)], (lead, trail)
