"""`python benchmarks/gresnet_fuse.py`: GResNet inference with split norm vs the same model fused, in one run.

Both models see the same batches, timed in alternation (split, fused, split, ...) so that load from other
processes hits both alike; images/s come from the median batch time. The model is given non-trivial
statistics first (random affines, a few train-mode passes on shifted inputs) so that the max abs
difference tests the fold, borders included, rather than an identity. `--naive` adds a third model, the
fold with plain zero padding (inexact at the borders), to show what exactness costs.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import timm
import torch
from torch import nn

import medconv.models.gresnet  # noqa: F401  (registers the gresnet* models with timm)
from medconv.bench.machine import cpu_model
from medconv.io.atomic import write_json
from medconv.models.split_norm import ChannelAffine, FusedConv2d


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/gresnet_fuse.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gresnet50", help="a registered gresnet* model")
    p.add_argument("--img-size", type=int, nargs="+", default=[224], metavar="N", help="N or H W (non-square ok)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=10, help="timed batches per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive", action="store_true", help="also time the inexact fold without border correction")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    args = p.parse_args(argv)
    if len(args.img_size) not in (1, 2):
        p.error("--img-size takes N or H W")
    return args


@torch.no_grad()
def make_statistics_nontrivial(model: nn.Module, shape: tuple[int, ...], device: torch.device, steps: int = 3) -> None:
    """Random affines and running stats from shifted, scaled inputs: a fold error would show."""
    for m in model.modules():
        if isinstance(m, ChannelAffine):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
    model.train()
    for _ in range(steps):
        model(torch.randn(shape, device=device) * 2.0 + 0.5)
    model.eval()


def without_border_correction(fused: nn.Module) -> nn.Module:
    """A copy whose fused convs zero-pad the raw input: what a naive fold computes."""
    naive = copy.deepcopy(fused)
    for parent in list(naive.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FusedConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation).to(child.weight)
                conv.load_state_dict({"weight": child.weight, "bias": child.bias})
                setattr(parent, name, conv)
    return naive


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (args.img_size * 2)[:2]
    shape = (args.batch, args.in_chans, h, w)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    dtype = getattr(torch, args.dtype)

    split = timm.create_model(args.model, pretrained=False, in_chans=args.in_chans).to(device)
    make_statistics_nontrivial(split, shape, device)
    fused = copy.deepcopy(split).fuse().eval()
    split, fused = (m.to(dtype=dtype, memory_format=memory_format) for m in (split, fused))
    x = torch.randn(shape, device=device).mul_(2.0).add_(0.5).to(dtype).contiguous(memory_format=memory_format)

    models = {"split": split, "fused": fused}
    if args.naive:
        models["naive"] = without_border_correction(fused)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():  # differences on the last feature map (logits are a linear map of its mean)
        ref = split.forward_features(x).float()
        ref_max = max(ref.abs().max().item(), 1e-12)
        diffs = {n: (m.forward_features(x).float() - ref).abs().max().item() for n, m in models.items() if n != "split"}
        for i in range(args.warmup + args.iters):
            for name, model in models.items():
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)

    ips = {name: args.batch / statistics.median(t) for name, t in times.items()}
    split_ips, fused_ips = ips["split"], ips["fused"]
    result = {
        "benchmark": "gresnet-fuse",
        "model": args.model,
        "params_m": round(sum(p.numel() for p in split.parameters()) / 1e6, 3),
        "input": list(shape),
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "iters": args.iters,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "split_img_s": round(split_ips, 3),
        "fused_img_s": round(fused_ips, 3),
        "fused_over_split": round(fused_ips / split_ips, 3),
        "max_abs_diff": diffs["fused"],
        "max_rel_diff": diffs["fused"] / ref_max,
    }
    if args.naive:
        result.update(
            naive_img_s=round(ips["naive"], 3),
            fused_over_naive=round(fused_ips / ips["naive"], 3),
            naive_max_rel_diff=diffs["naive"] / ref_max,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    n, c, h, w = result["input"]
    print(f"{result['model']} ({result['params_m']}M) batch {n}x{c}x{h}x{w} on {result['device_name']}, "
          f"{result['torch_threads']} threads, {result['iters']} iters, {result['dtype']}")
    print(f"  split norm : {result['split_img_s']:10.2f} img/s")
    print(f"  fused      : {result['fused_img_s']:10.2f} img/s")
    print(f"  fused/split: {result['fused_over_split']:10.3f}x")
    print(f"  max |diff| : {result['max_abs_diff']:.3e} "
          f"(last feature map; relative to its max |x|: {result['max_rel_diff']:.3e})")
    if args.naive:
        print(f"  naive fold : {result['naive_img_s']:10.2f} img/s, fused/naive {result['fused_over_naive']:.3f}x, "
              f"relative max |diff| {result['naive_max_rel_diff']:.3e} (zero padding: wrong at the borders)")
    if args.json is not None:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
