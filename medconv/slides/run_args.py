"""The arguments every slide command takes (`medconv infer`, `medconv embed`): slide mpp, loader size, and the
Lightning devices and precision, turned into `lightning.Trainer` keyword arguments in one place."""

from __future__ import annotations

import argparse

from medconv.errors import ConfigError


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What every slide pipeline command (infer, embed) takes: slide mpp, loader and Lightning devices/precision."""
    p.add_argument("--slide-mpp", type=float, default=None, help="um/px for slides whose files lack it (overrides all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", default="auto", help="DataLoader workers per process (auto: on a GPU all cores of "
                   "the process's share but two, at most 16; on a CPU, where the model takes the cores, one per 8 cores)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, ...")
    p.add_argument("--devices", default="1", help="Lightning devices: a count, a list like 0,1, or auto")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp: each slide goes to one process")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--precision", default=None, help="Lightning precision; default: bf16/16 mixed (AMP) on GPU, bf16-mixed "
                   "on CPUs with native bf16 (AVX512-BF16/AMX), else 32-true")


def trainer_kwargs(args: argparse.Namespace) -> dict:
    """accelerator, devices, strategy, num_nodes, precision for `lightning.Trainer`; also resolves
    `args.num_workers` (`auto`) now that the accelerator and devices are known."""
    import torch

    from medconv.precision import inference_precision
    from medconv.slides.loader_workers import loader_workers

    devices: int | str | list[int] = args.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    elif isinstance(devices, str) and "," in devices:
        devices = [int(d) for d in devices.split(",") if d]
    accelerator = args.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = args.precision or inference_precision(accelerator)
    try:
        args.num_workers = loader_workers(args.num_workers, accelerator, devices)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return {"accelerator": accelerator, "devices": devices, "strategy": args.strategy, "num_nodes": args.num_nodes,
            "precision": precision}
