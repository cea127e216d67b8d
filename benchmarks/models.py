"""Backbones x input sizes x precision x attention kernel -> images/s and peak memory, medconv against bare timm.

Every configuration runs in a fresh subprocess (`medconv.bench.isolated`), and each medconv row (the real
`ClassificationModule` through Lightning) has a bare-timm row beside it, so framework overhead is the
ratio of the two (`medconv.bench.measure`). `--max-batch` finds the largest training batch that fits
(doubling, then bisection), optionally under `--memory-budget-gb` (on a GPU it caps this process's share,
e.g. 80 GB on a larger card).

    python benchmarks/models.py --models convnext_atto swin_tiny_patch4_window7_224 --sizes 128 256 --batch-size 2
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
from medconv.bench.results import write_results
from medconv.bench.search import Fits, bisect_largest


def largest_fitting(fits: Fits, start: int = 1, limit: int = 4096) -> int:
    """Largest n in [start, limit] with fits(n), assuming fits is monotone; 0 if even `start` fails.

    Doubles until a failure, then bisects between the last success and the first failure: no prior
    knowledge needed, about 2 log2(n) trials.
    """
    if not fits(start):
        return 0
    good, bad = start, None
    while bad is None and good < limit:
        trial = min(good * 2, limit)
        if fits(trial):
            good = trial
        else:
            bad = trial
    return bisect_largest(fits, good, bad)


def add_ratios(rows: list[dict]) -> None:
    """medconv images/s over the bare-timm images/s of the same configuration (1.0 = no overhead)."""
    def key(row: dict) -> tuple:
        return tuple(row.get(k) for k in ("model", "height", "width", "batch_size", "precision", "attention", "mode"))

    baseline = {key(r): r.get("images_per_s") for r in rows if r.get("impl") == "timm" and r.get("status") == "ok"}
    for row in rows:
        base = baseline.get(key(row))
        ok = row.get("status") == "ok" and base
        row["ratio_vs_timm"] = round(row["images_per_s"] / base, 3) if ok else None


def print_table(rows: list[dict]) -> None:
    head = f"{'model':32} {'impl':7} {'mode':5} {'size':>10} {'bs':>4} {'precision':10} {'attn':9} {'img/s':>9} {'vs timm':>7} {'peak MiB':>9}  status"
    print(head)
    for r in rows:
        size = f"{r['height']}x{r['width']}"
        speed = r.get("images_per_s")
        speed = f"{speed:9.2f}" if isinstance(speed, float) and speed == speed else f"{'-':>9}"
        ratio = f"{r['ratio_vs_timm']:7.3f}" if r.get("ratio_vs_timm") else f"{'-':>7}"
        peak = r.get("peak_mem_mb")
        peak = f"{peak:9.0f}" if isinstance(peak, (int, float)) else f"{'-':>9}"
        print(f"{r['model'][:32]:32} {r['impl']:7} {r['mode']:5} {size:>10} {r['batch_size']:>4} {r['precision']:10} "
              f"{r['attention']:9} {speed} {ratio} {peak}  {r['status']}")


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
    parser = argparse.ArgumentParser(prog="python benchmarks/models.py", description=__doc__.split("\n\n")[0])
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
