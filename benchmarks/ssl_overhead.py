"""`python benchmarks/ssl_overhead.py`: pretraining images/s of the medconv module against a bare PyTorch loop, and peak memory.

Both sides run the same objective (`medconv.ssl.MaskedImageModelling` or `DINO`: same backbone, mask and loss) on
the same in-memory batches with the same optimiser and precision; the bare side is a plain
`loss.backward(); opt.step()` loop, the medconv side is `PretrainModule` under a Lightning Trainer with logging on.
Rounds alternate and the best round of each counts (background load hits both alike). Goal: ratio >= 0.9.
On CUDA it also reports the peak memory of one masked-modelling step per model and size (`--memory-sizes`).
"""

from __future__ import annotations

import argparse
import statistics

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from medconv import keys
from medconv.bench.train_overhead import StepTimer, add_loop_arguments, autocast, loop_setup, timed_loop
from medconv.io.atomic import write_json

PRECISIONS = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}  # --precision -> Lightning's


def parse_model(spec: str) -> tuple[str, dict]:
    """`swin_tiny_patch4_window7_224:window_size=8,depths=[2,2,6,2]` -> name and timm constructor arguments."""
    import yaml

    name, _, rest = spec.partition(":")
    return name, (yaml.safe_load("{" + rest.replace("=", ": ") + "}") if rest else {})


def build_objective(method: str, model: str, chans: int, size: tuple[int, int]) -> nn.Module:
    """The objective both loops train (fresh, seeded), built as a config would build it."""
    from medconv.models import TimmBackbone
    from medconv.ssl import DINO, MaskedImageModelling

    torch.manual_seed(0)
    name, model_args = parse_model(model)
    backbone = TimmBackbone(name, in_chans=chans, img_size=size, model_args=model_args)
    if method == "mim":
        return MaskedImageModelling(backbone)
    if method == "dino":
        return DINO(backbone, out_dim=4096)
    raise SystemExit(f"benchmarks/ssl_overhead.py: unknown method {method!r}; choose mim or dino")


def _views(method: str, batch: dict) -> dict:
    """DINO trains on two views: here the same in-memory batch twice (the data pipeline is not what is timed)."""
    return {keys.CROPS: [batch[keys.IMAGE], batch[keys.IMAGE].flip(-1)]} if method == "dino" else batch


def bare_loop(objective: nn.Module, method: str, loader: DataLoader, steps: int, warmup: int, device: str, precision: str) -> float:
    objective = objective.to(device).train()
    return timed_loop(lambda b: objective(_views(method, b))["loss"], objective.parameters(), loader, steps, warmup, device,
                      precision, after=getattr(objective, "after_optimizer_step", None))


class _Views(nn.Module):
    """Wraps the objective so PretrainModule sees the batches the data module would give it."""

    def __init__(self, objective: nn.Module, method: str):
        super().__init__()
        self.objective, self.method = objective, method

    def forward(self, batch: dict) -> dict:
        return self.objective(_views(self.method, batch))

    def export_encoder(self) -> nn.Module:
        return self.objective.export_encoder()

    def after_optimizer_step(self, step: int, total: int) -> None:
        after = getattr(self.objective, "after_optimizer_step", None)
        if after is not None:
            after(step, total)


def medconv_loop(objective: nn.Module, method: str, loader: DataLoader, steps: int, warmup: int, device: str, precision: str) -> float:
    from medconv.tasks import PretrainModule

    module = PretrainModule(getattr(objective, "backbone", None) or objective.export_encoder(), _Views(objective, method),
                            optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4))
    timer = StepTimer(warmup, steps, device)
    trainer = L.Trainer(
        accelerator=device, devices=1, max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0,
        precision=PRECISIONS[precision], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0, log_every_n_steps=10,
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.rate


def peak_memory(method: str, model: str, chans: int, size: tuple[int, int], batch: int, precision: str) -> float:
    """GiB of CUDA memory at the peak of one forward + backward of the objective."""
    objective = build_objective(method, model, chans, size).cuda().train()
    x = torch.randn(batch, chans, *size, device="cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with autocast("cuda", precision):
        loss = objective(_views(method, {keys.IMAGE: x}))["loss"]
    loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/ssl_overhead.py", description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["mim", "dino"], default="mim")
    parser.add_argument("--models", nargs="+", default=["convnext_atto", "swin_tiny_patch4_window7_224:window_size=8"],
                        help="timm names, each optionally with constructor arguments `name:key=value,...` (Swin's windows "
                             "must tile the stride-32 grid: window_size=8 at 256, 1024, 2048 px); one CNN and one ViT by default")
    add_loop_arguments(parser, size=256, batch=8, steps=10, warmup=2)
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[1024, 2048],
                        help="square sizes for the CUDA peak-memory table (batch 1); skipped on CPU")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = tuple(args.image_size)
    loader, device = loop_setup(args)
    results = []
    for model in args.models:
        bare, ours = [], []
        for r in range(args.rounds):
            bare.append(bare_loop(build_objective(args.method, model, args.in_chans, size), args.method, loader,
                                  args.steps, args.warmup, args.device, args.precision))
            ours.append(medconv_loop(build_objective(args.method, model, args.in_chans, size), args.method, loader,
                                     args.steps, args.warmup, args.device, args.precision))
            print(f"{model} round {r + 1}: bare {bare[-1]:.2f} img/s, medconv {ours[-1]:.2f} img/s", flush=True)
        # Best round of each side, and the median of the rounds' paired ratios (each pair ran back to back):
        # on a machine other jobs share, one lucky round moves the first, not the second.
        row = {"model": model, "method": args.method, "bare_images_per_s": max(bare), "medconv_images_per_s": max(ours),
               "ratio": max(ours) / max(bare), "median_round_ratio": statistics.median(o / b for b, o in zip(bare, ours, strict=True))}
        if args.device == "cuda":
            row["peak_memory_gib"] = {str(s): round(peak_memory(args.method, model, args.in_chans, (s, s), 1, args.precision), 2)
                                      for s in args.memory_sizes}
        results.append(row)
        print(f"{model} {args.method} {size[0]}x{size[1]} batch {args.batch} {args.precision} on {device}: bare "
              f"{row['bare_images_per_s']:.2f} img/s, medconv {row['medconv_images_per_s']:.2f} img/s, ratio {row['ratio']:.3f}, "
              f"median of the rounds' ratios {row['median_round_ratio']:.3f} (goal >= 0.9)" + (f"; peak GiB {row['peak_memory_gib']}" if "peak_memory_gib" in row else ""), flush=True)
    if args.json:
        write_json(args.json, {"device": device, "torch": torch.__version__, "image_size": list(size), "batch": args.batch,
                               "steps": args.steps, "rounds": args.rounds, "precision": args.precision, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
