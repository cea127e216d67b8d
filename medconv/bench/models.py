"""`medconv bench models`: backbones x input sizes x precision x attention kernel -> images/s and peak memory.

Every configuration runs in a fresh subprocess (peak RSS on CPU is per process; a CUDA OOM cannot poison
the next run). Each medconv row (the real `ClassificationModule` training step through a Lightning
Trainer, inference through the module) has a bare-timm row beside it (timm model + AdamW + autocast loop
on the same model and batch) so framework overhead is the ratio between the two. `--max-batch` finds the
largest training batch that fits (doubling, then bisection), optionally under `--memory-budget-gb` (on a
GPU it caps this process's share, e.g. 80 GB on a larger card).

    medconv bench models --models convnext_atto swin_tiny_patch4_window7_224 --sizes 128 256 --batch-size 2
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
ATTENTIONS = ("auto", "flash", "efficient", "math")


@dataclass(frozen=True)
class Config:
    """One measurement: what a row of the results table describes."""

    model: str
    height: int
    width: int
    batch_size: int
    precision: str = "bf16-mixed"
    attention: str = "auto"
    mode: str = "train"  # train | infer
    impl: str = "medconv"  # medconv | timm
    grad_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False
    device: str = "cpu"
    in_chans: int = 3
    steps: int = 5
    warmup: int = 2
    memory_budget_gb: float | None = None
    model_args: dict = field(default_factory=dict, hash=False, compare=False)


# --- measurement (runs inside the worker subprocess) ----------------------------------------------------


def _rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _autocast_dtype(precision: str):
    import torch

    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _batch(cfg: Config):
    import torch

    from medconv import keys

    torch.manual_seed(0)
    x = torch.randn(cfg.batch_size, cfg.in_chans, cfg.height, cfg.width, device=cfg.device)
    y = torch.randint(0, 2, (cfg.batch_size,), device=cfg.device)
    return {keys.IMAGE: x, keys.LABEL: y}


def _build_medconv(cfg: Config):
    from medconv.models import TimmBackbone
    from medconv.tasks import ClassificationModule

    backbone = TimmBackbone(
        cfg.model,
        in_chans=cfg.in_chans,
        img_size=(cfg.height, cfg.width),
        grad_checkpointing=cfg.grad_checkpointing,
        attention=cfg.attention,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        model_args=cfg.model_args,
    )
    return ClassificationModule(backbone=backbone, num_classes=2)


def _build_timm(cfg: Config):
    """The bare baseline: timm's own model (SDPA where timm uses it), nothing of medconv around it."""
    import timm
    import torch
    from timm.layers import set_fused_attn

    set_fused_attn(True, experimental=True)
    kwargs = dict(cfg.model_args)
    try:
        model = timm.create_model(
            cfg.model, pretrained=False, num_classes=2, in_chans=cfg.in_chans, img_size=(cfg.height, cfg.width), **kwargs
        )
    except TypeError:
        model = timm.create_model(cfg.model, pretrained=False, num_classes=2, in_chans=cfg.in_chans, **kwargs)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    return model


def _step_timer(warmup: int, device: str):
    """A Lightning callback holding the wall clock at the start of the first timed step."""
    import lightning as L

    class StepTimer(L.Callback):
        start = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                _sync(device)
                self.start = time.perf_counter()

    return StepTimer()


def _train_medconv(cfg: Config) -> float:
    """Seconds for `steps` real training steps of ClassificationModule through a Lightning Trainer."""
    import lightning as L
    from torch.utils.data import DataLoader, IterableDataset

    batch = _batch(cfg)
    total = cfg.warmup + cfg.steps

    class Repeat(IterableDataset):
        """The same on-device batch each step: the data path is not what this benchmark measures."""

        def __iter__(self):
            return iter([batch] * total)

    module = _build_medconv(cfg)
    timer = _step_timer(cfg.warmup, cfg.device)
    trainer = L.Trainer(
        accelerator="gpu" if cfg.device == "cuda" else "cpu",
        devices=1,
        precision={"32": "32-true"}.get(cfg.precision, cfg.precision),
        max_steps=total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, DataLoader(Repeat(), batch_size=None))
    _sync(cfg.device)
    return time.perf_counter() - timer.start


def _train_timm(cfg: Config) -> float:
    import torch

    model = _build_timm(cfg).to(cfg.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    dtype = _autocast_dtype(cfg.precision)
    scaler = torch.amp.GradScaler(cfg.device, enabled=dtype == torch.float16)
    batch = _batch(cfg)
    x, y = batch["image"], batch["label"]
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    from medconv.models.attention import KernelScope

    with KernelScope(cfg.attention).context():
        for step in range(cfg.warmup + cfg.steps):
            if step == cfg.warmup:
                _sync(cfg.device)
                start = time.perf_counter()
            with torch.autocast(cfg.device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    _sync(cfg.device)
    return time.perf_counter() - start


def _infer(cfg: Config) -> float:
    import torch

    if cfg.impl == "medconv":
        model = _build_medconv(cfg)
    else:
        model = _build_timm(cfg)
    model = model.to(cfg.device).eval()
    dtype = _autocast_dtype(cfg.precision)
    x = _batch(cfg)["image"]
    from medconv.models.attention import KernelScope

    with torch.inference_mode(), KernelScope(cfg.attention).context():
        for step in range(cfg.warmup + cfg.steps):
            if step == cfg.warmup:
                _sync(cfg.device)
                start = time.perf_counter()
            with torch.autocast(cfg.device, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(x)
    _sync(cfg.device)
    return time.perf_counter() - start


def measure(cfg: Config) -> dict:
    """Run one configuration in this process; a result row (status 'oom' when it does not fit)."""
    import torch

    if cfg.device == "cuda" and cfg.memory_budget_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.memory_budget_gb * 2**30 / total))
    row = asdict(cfg) | {"pixels": cfg.height * cfg.width, "status": "ok", "images_per_s": float("nan")}
    row["model_args"] = json.dumps(cfg.model_args, sort_keys=True) if cfg.model_args else ""
    row["base_rss_mb"] = round(_rss_mb(), 1)
    try:
        if cfg.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if cfg.mode == "infer":
            seconds = _infer(cfg)
        else:
            seconds = _train_medconv(cfg) if cfg.impl == "medconv" else _train_timm(cfg)
        row["images_per_s"] = cfg.batch_size * cfg.steps / seconds
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    except RuntimeError as err:  # CPU allocators and kernels without a backend raise plain RuntimeErrors
        row["status"] = "oom" if "out of memory" in str(err).lower() else f"error: {str(err).splitlines()[0][:200]}"
    if cfg.device == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["mem_kind"] = "cuda_peak_allocated"
    else:
        row["peak_mem_mb"] = _peak_rss_mb()
        row["mem_kind"] = "cpu_peak_rss"
        if cfg.memory_budget_gb and row["status"] == "ok" and row["peak_mem_mb"] > cfg.memory_budget_gb * 1024:
            row["status"] = "oom"
    row["peak_mem_mb"] = round(row["peak_mem_mb"], 1)
    return row


# --- orchestration (main process) -------------------------------------------------------------------------


def run_isolated(cfg: Config, timeout_s: float = 3600) -> dict:
    """`measure(cfg)` in a fresh Python process, so its peak memory is its own."""
    payload = json.dumps(asdict(cfg))
    cmd = [sys.executable, "-m", "medconv.bench.models", "--worker", payload]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return asdict(cfg) | {"status": f"error: timeout after {timeout_s:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    status = "oom" if "out of memory" in tail[0].lower() or proc.returncode in (-9, 137) else f"error: {tail[0][:200]}"
    return asdict(cfg) | {"status": status, "pixels": cfg.height * cfg.width}


def largest_fitting(fits, start: int = 1, limit: int = 4096) -> int:
    """Largest n in [start, limit] with fits(n), assuming fits is monotone; 0 if even `start` fails.

    Doubles until a failure, then bisects between the last success and the first failure.
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
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


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


def add_ratios(rows: list[dict]) -> None:
    """medconv images/s over the bare-timm images/s of the same configuration (1.0 = no overhead)."""
    def key(row: dict) -> tuple:
        return tuple(row.get(k) for k in ("model", "height", "width", "batch_size", "precision", "attention", "mode"))

    baseline = {key(r): r.get("images_per_s") for r in rows if r.get("impl") == "timm" and r.get("status") == "ok"}
    for row in rows:
        base = baseline.get(key(row))
        ok = row.get("status") == "ok" and base
        row["ratio_vs_timm"] = round(row["images_per_s"] / base, 3) if ok else None


COLUMNS = [
    "model", "impl", "mode", "height", "width", "pixels", "batch_size", "precision", "attention",
    "grad_checkpointing", "channels_last", "compile", "device", "images_per_s", "ratio_vs_timm", "peak_mem_mb",
    "mem_kind", "base_rss_mb", "status", "steps", "warmup", "memory_budget_gb", "max_batch", "model_args",
]


def write_results(rows: list[dict], out: Path, stem: str = "models") -> dict[str, Path]:
    """CSV + JSON (atomically: temp file, then rename) and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json", "plot": out / f"{stem}.png"}
    tmp = paths["csv"].with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    tmp.replace(paths["csv"])
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1, default=str))
    tmp.replace(paths["json"])
    plot(rows, paths["plot"])
    return paths


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else value


def plot(rows: list[dict], path: Path) -> None:
    """Peak memory vs pixels (log-log) and throughput vs pixels, one line per model/precision/kernel/impl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_speed) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("max_batch") is None:
            label = (row["model"], row["impl"], row["mode"], row["precision"], row["attention"])
            series.setdefault(label, []).append(row)
    for (model, impl, mode, precision, attention), points in sorted(series.items()):
        points.sort(key=lambda r: r["pixels"])
        pixels = [p["pixels"] for p in points]
        style = "-" if impl == "medconv" else ":"
        label = f"{model} {mode} {precision} {attention}" + (" (timm)" if impl == "timm" else "")
        ax_mem.loglog(pixels, [p["peak_mem_mb"] for p in points], style, marker="o", label=label)
        ax_speed.loglog(pixels, [p["images_per_s"] for p in points], style, marker="o", label=label)
    mem_kind = next((r.get("mem_kind") for r in rows if r.get("mem_kind")), "")
    ax_mem.set(xlabel="pixels per image", ylabel=f"peak memory (MiB, {mem_kind})", title="memory vs input size")
    ax_speed.set(xlabel="pixels per image", ylabel="images/s", title="throughput vs input size")
    for ax in (ax_mem, ax_speed):
        ax.grid(True, which="both", alpha=0.3)
    if series:
        ax_speed.legend(fontsize=6, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _print_table(rows: list[dict]) -> None:
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def _max_batch_rows(configs: list[Config], args: argparse.Namespace) -> list[dict]:
    rows = []
    seen = set()
    for cfg in configs:
        if cfg.mode != "train" or cfg.impl != "medconv":
            continue
        trial_cfg = replace(cfg, steps=1, warmup=1)
        key = (cfg.model, cfg.height, cfg.width, cfg.precision, cfg.attention)
        if key in seen:
            continue
        seen.add(key)
        trials: dict[int, dict] = {}

        def fits(batch: int) -> bool:
            trials[batch] = run_isolated(replace(trial_cfg, batch_size=batch), args.timeout)
            print(f"  {cfg.model} {cfg.height}x{cfg.width} batch {batch}: {trials[batch]['status']}", flush=True)
            return trials[batch]["status"] == "ok"

        best = largest_fitting(fits, start=1, limit=args.max_batch_limit)
        row = dict(trials.get(best) or (asdict(trial_cfg) | {"status": "oom", "pixels": cfg.height * cfg.width}))
        row["max_batch"] = best
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        payload = json.loads(args.worker)
        print("RESULT " + json.dumps(measure(Config(**payload))), flush=True)
        return 0
    configs = expand(args)
    if args.max_batch:
        rows = _max_batch_rows(configs, args)
        paths = write_results(rows, args.out, stem="models_max_batch")
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
        _print_table(rows)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in rows if str(r.get("status", "")).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
