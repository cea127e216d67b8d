"""`medconv bench train-overhead`: what Lightning + the medconv task cost over a bare PyTorch loop.

Both sides train the same timm model on the same in-memory batches with the same optimizer, loss and
precision; rounds alternate (bare, medconv, bare, ...) and the best round of each counts, so background
load hits both alike. Prints images/s and the ratio medconv / bare (goal ≥ 0.95).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from medconv import keys
from medconv.bench.machine import cpu_model
from medconv.io.atomic import write_json


class _Batches(Dataset):
    """Fixed random images and labels, `n` samples cycling over `distinct` ones: decoding is not what this
    benchmark measures, and 7,000 distinct 224² images would take seconds to draw and 4 GB to hold."""

    def __init__(self, n: int, chans: int, size: tuple[int, int], distinct: int | None = None):
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.x = torch.randn(min(n, distinct or n), chans, *size, generator=g)
        self.y = torch.randint(0, 2, (len(self.x),), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.x[i % len(self.x)], keys.LABEL: self.y[i % len(self.x)]}


def autocast(device: str, precision: str):
    """The autocast context of a `--precision` value (bf16, 16, 32) on `device`."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    if precision == "16":
        return torch.autocast(device_type=device, dtype=torch.float16)
    return torch.autocast(device_type=device, enabled=False)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_loop(model_name: str, loader: DataLoader, steps: int, warmup: int, device: str, precision: str, chans: int) -> float:
    """Images/s of the plain loop: timm model, AdamW, cross-entropy (GradScaler for fp16)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=2, in_chans=chans).to(device).train()
    return timed_loop(lambda b: torch.nn.functional.cross_entropy(model(b[keys.IMAGE]), b[keys.LABEL]), model.parameters(),
                      loader, steps, warmup, device, precision)


def timed_loop(loss_fn, params, loader: DataLoader, steps: int, warmup: int, device: str, precision: str,  # noqa: ANN001
               after=None) -> float:  # noqa: ANN001
    """Images/s of `loss_fn(batch).backward(); AdamW.step()` over steps [warmup, warmup + steps): the bare PyTorch side
    of every benchmark against medconv's Lightning modules. `after(step, total)` runs after each optimiser step."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16")
    seen, start = 0, 0.0
    it = iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        with autocast(device, precision):
            loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if after is not None:
            after(step + 1, warmup + steps)
        if step >= warmup:
            seen += len(batch[keys.IMAGE])
    _sync(device)
    return seen / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Times steps [warmup, warmup + steps) of a Lightning fit exactly as the bare loops time theirs."""

    def __init__(self, warmup: int, steps: int, device: str):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.end = 0.0
        self.seen = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):  # noqa: ANN001
        if batch_idx == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # noqa: ANN001
        if batch_idx >= self.warmup:
            self.seen += len(batch[keys.IMAGE])
        if batch_idx == self.warmup + self.steps - 1:
            _sync(self.device)
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.seen / (self.end - self.start)


def medconv_loop(model_name: str, loader: DataLoader, steps: int, warmup: int, device: str, precision: str,
                 chans: int, size: tuple[int, int]) -> tuple[float, float]:
    """Images/s of `ClassificationModule` + TimmBackbone under a Lightning Trainer (logging on, as in a real
    run), and the seconds `fit` takes after the last step (epoch end, teardown).

    The rate is timed from the first timed step to the end of the last, as the bare loop is: the tail is a
    one-off cost per `fit` that a long run does not notice, so it is reported beside the ratio, not in it.
    """
    from medconv.models import TimmBackbone
    from medconv.tasks import ClassificationModule

    torch.manual_seed(0)
    module = ClassificationModule(
        TimmBackbone(model_name, in_chans=chans, img_size=size), num_classes=2,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4),
    )  # the task's default LR schedule stays on: a real run pays for it too
    timer = StepTimer(warmup, steps, device)
    trainer = L.Trainer(
        accelerator=device, devices=1, max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0,
        precision={"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}[precision],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], num_sanity_val_steps=0, log_every_n_steps=10,
    )
    trainer.fit(module, train_dataloaders=loader)
    _sync(device)
    return timer.rate, time.perf_counter() - timer.end


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medconv bench train-overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_atto", help="timm model name (default: convnext_atto)")
    add_loop_arguments(parser, size=224, batch=16, steps=20, warmup=3)
    return parser


def add_loop_arguments(parser: argparse.ArgumentParser, size: int, batch: int, steps: int, warmup: int) -> None:
    """The options every bare-loop-versus-medconv benchmark shares (train-overhead, benchmarks/ssl_overhead.py)."""
    parser.add_argument("--image-size", type=int, nargs=2, default=[size, size], metavar=("H", "W"))
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each side counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16", "16"], default="bf16" if torch.cuda.is_available() else "32")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on the CPU (default: torch's); 1 steadies "
                        "timings on a machine other jobs share")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")


def loop_setup(args: argparse.Namespace) -> tuple[DataLoader, str]:
    """What `add_loop_arguments` asks for: the threads, the fixed in-memory batches, and the device's name."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data = _Batches(args.batch * (args.steps + args.warmup), args.in_chans, tuple(args.image_size), distinct=args.batch * 4)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, num_workers=0, pin_memory=args.device == "cuda")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_model()} ({torch.get_num_threads()} threads)"
    return loader, device


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = tuple(args.image_size)
    loader, device = loop_setup(args)
    bare, ours, tails = [], [], []
    for r in range(args.rounds):
        bare.append(bare_loop(args.model, loader, args.steps, args.warmup, args.device, args.precision, args.in_chans))
        rate, tail = medconv_loop(args.model, loader, args.steps, args.warmup, args.device, args.precision,
                                  args.in_chans, size)
        ours.append(rate)
        tails.append(tail)
        print(f"round {r + 1}: bare {bare[-1]:.2f} img/s, medconv {ours[-1]:.2f} img/s (fit tail {tail:.2f} s)",
              flush=True)
    result = {
        "model": args.model, "image_size": list(size), "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
        "device": device, "precision": args.precision, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "bare_images_per_s": max(bare), "medconv_images_per_s": max(ours), "ratio": max(ours) / max(bare),
        "medconv_fit_tail_s": round(min(tails), 3),
    }
    print(
        f"{args.model} {size[0]}x{size[1]} batch {args.batch} {args.precision} on {result['device']}: "
        f"bare loop {result['bare_images_per_s']:.2f} img/s, medconv {result['medconv_images_per_s']:.2f} img/s, "
        f"ratio {result['ratio']:.3f} (goal >= 0.95); after the last step fit takes {result['medconv_fit_tail_s']} s more"
    )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":  # `medconv bench gpu` runs it in a process of its own
    raise SystemExit(main())

