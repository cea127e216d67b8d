"""`medconv bench models`: backbones x input sizes x precision x attention kernel -> images/s and peak memory.

Every configuration runs in a fresh subprocess (`isolated`), and each medconv row (the real
`ClassificationModule` through Lightning) has a bare-timm row beside it, so framework overhead is the
ratio of the two (`measure`). `--max-batch` finds the largest training batch that fits (doubling, then
bisection), optionally under `--memory-budget-gb` (on a GPU it caps this process's share, e.g. 80 GB on
a larger card). This module is the command: the grid and the search; `results` writes the files.

    medconv bench models --models convnext_atto swin_tiny_patch4_window7_224 --sizes 128 256 --batch-size 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from medconv.bench.isolated import run_isolated
from medconv.bench.measure import ATTENTIONS, PRECISIONS, Config
from medconv.bench.results import add_ratios, print_table, write_results
from medconv.bench.search import largest_fitting


def _has_attention(model: str, model_args: dict) -> bool:
    """Whether a kernel choice can matter: build the model on the meta device (no memory) and look."""
    import timm
    import torch

    from medconv.models.attention import attention_modules

    try:
        with torch.device("meta"):
            net = timm.create_model(model, pretrained=False, num_classes=0, **model_args)
    except Exception:  # noqa: BLE001 - unknown: measure every kernel
        return True
    return bool(attention_modules(net))


def parse_size(text: str) -> tuple[int, int]:
    """`512` -> (512, 512); `2048x1024` -> (2048, 1024) as (height, width)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"size {text!r}: use N or HxW")


def expand(args: argparse.Namespace) -> list[Config]:
    """The grid of configurations; attention kernels only for models that have attention layers."""
    from medconv.models import TimmBackbone  # noqa: F401  (registers GResNet names with timm)

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_args = json.loads(args.model_args) if args.model_args else {}
    configs = []
    for model in args.models:
        kernels = args.attention if _has_attention(model, model_args) else ["auto"]
        for (height, width), precision, attention in itertools.product(args.sizes, args.precision, kernels):
            if device == "cpu" and precision == "16-mixed":
                precision = "bf16-mixed"  # Lightning does the same: no fp16 autocast on CPU
            base = Config(
                model=model, height=height, width=width, batch_size=args.batch_size, precision=precision,
                attention=attention, grad_checkpointing=args.grad_checkpointing, channels_last=args.channels_last,
                compile=args.compile, device=device, in_chans=args.in_chans, steps=args.steps, warmup=args.warmup,
                memory_budget_gb=args.memory_budget_gb, model_args=model_args,
            )
            for mode, impl in itertools.product(args.modes, args.impls):
                cfg = replace(base, mode=mode, impl=impl)
                if cfg not in configs:
                    configs.append(cfg)
    return configs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medconv bench models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["convnext_tiny", "swin_tiny_patch4_window7_224", "hiera_tiny_224"],
                        help="timm names (GResNet names are registered by medconv.models)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size("224")], help="N or HxW (height x width)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["bf16-mixed"])
    parser.add_argument("--attention", nargs="+", choices=ATTENTIONS, default=["auto"])
    parser.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    parser.add_argument("--impls", nargs="+", choices=["medconv", "timm"], default=["medconv", "timm"],
                        help="medconv: ClassificationModule via Lightning; timm: bare timm model + AdamW loop")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (cudnn autotune, compile)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--model-args", default="", help="JSON of extra timm constructor arguments, e.g. '{\"depths\": [1,1,1,1]}'")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--max-batch", action="store_true",
                        help="find the largest training batch that fits per model/size/precision/kernel (medconv impl)")
    parser.add_argument("--max-batch-limit", type=int, default=1024)
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="GPU: cap this process's memory (e.g. 80 on a larger card); CPU: a peak-RSS limit")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--out", type=Path, default=Path("bench_results/models"))
    return parser


def _largest_batch_row(cfg: Config, args: argparse.Namespace) -> dict:
    """Search one configuration's largest training batch, a fresh process per trial."""
    trial_cfg = replace(cfg, steps=1, warmup=1)
    trials: dict[int, dict] = {}

    def fits(batch: int) -> bool:
        trials[batch] = run_isolated(replace(trial_cfg, batch_size=batch), args.timeout)
        print(f"  {cfg.model} {cfg.height}x{cfg.width} batch {batch}: {trials[batch]['status']}", flush=True)
        return trials[batch]["status"] == "ok"

    best = largest_fitting(fits, start=1, limit=args.max_batch_limit)
    row = dict(trials.get(best) or (asdict(trial_cfg) | {"status": "oom", "pixels": cfg.height * cfg.width}))
    row["max_batch"] = best
    return row


def _max_batch_rows(configs: list[Config], args: argparse.Namespace) -> list[dict]:
    rows, seen = [], set()
    for cfg in configs:
        key = (cfg.model, cfg.height, cfg.width, cfg.precision, cfg.attention)
        if cfg.mode == "train" and cfg.impl == "medconv" and key not in seen:
            seen.add(key)
            rows.append(_largest_batch_row(cfg, args))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configs = expand(args)
    if args.max_batch:
        rows = _max_batch_rows(configs, args)
        paths = write_results(rows, args.out, stem="models_max_batch", with_plot=False)
        for r in rows:
            print(f"{r['model']} {r['height']}x{r['width']} {r['precision']} {r['attention']} "
                  f"ckpt={r['grad_checkpointing']}: max batch {r['max_batch']} (peak {r.get('peak_mem_mb')} MiB)")
    else:
        rows = []
        for index, cfg in enumerate(configs, 1):
            print(f"[{index}/{len(configs)}] {cfg.model} {cfg.impl} {cfg.mode} {cfg.height}x{cfg.width} "
                  f"{cfg.precision} {cfg.attention}", flush=True)
            rows.append(run_isolated(cfg, args.timeout))
        add_ratios(rows)
        paths = write_results(rows, args.out)
        print_table(rows)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in rows if str(r.get("status", "")).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
