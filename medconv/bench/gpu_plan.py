"""What `medconv bench gpu` runs: the GPU goals of docs/benchmarks.md as data, and a check that needs no GPU.

The plan is data so that `--dry-run` can print it and test every step on a CPU before any GPU time is spent:
each model is built and run at its planned size on PyTorch's meta device (shapes only, no memory), and
the train-overhead arguments go through that command's own parser.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path

from medconv.bench.measure import Config

SECTIONS = ("tests", "memory", "overhead", "infer", "max_batch")
# Shares of a `--time-budget`, from a run on an H200 (tests 73 s; four memory workers 33 s each; train-overhead
# needs ~40 s; each model's max-batch climb ~40 s; infer: the 20k demo slide takes 25 s to make (on the 2-core
# CPU VM), then `bench infer` ~60 s, estimated from CPU runs); unused time moves on to later sections.
SHARES = {"tests": 0.22, "memory": 0.27, "overhead": 0.1, "infer": 0.18, "max_batch": 0.23}
# The GPU goal for slide inference: the loader (default workers) keeps up with convnext_tiny at 256².
INFER_MODEL, INFER_TILE = "convnext_tiny", 256

# Hierarchical ViTs, flash-eligible first: if a --time-budget runs short, the last ones go unmeasured.
MEMORY_MODELS = ("hiera_tiny_224", "swin_tiny_patch4_window7_224", "pvt_v2_b2", "swinv2_tiny_window8_256")
MAX_BATCH_MODELS = ("convnext_tiny", "swin_tiny_patch4_window7_224", "hiera_tiny_224")
TINY = {  # --smoke: the same steps on models small enough for a CPU
    "swin_tiny_patch4_window7_224": {"depths": [1, 1, 1, 1], "embed_dim": 24, "num_heads": [1, 1, 1, 1]},
    "convnext_atto": {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]},
}


@dataclass
class Plan:
    device: str
    tests: Path | None  # tests/gpu of a checkout; None when medconv is installed without its tests
    memory: list[list[Config]]  # one worker process per inner list
    overhead: list[str]  # arguments of `medconv bench train-overhead`
    overhead_json: Path
    max_batch: list[Config]  # batch_size is what the search sets
    max_batch_limit: int
    infer_slide: list[str] = field(default_factory=list)  # arguments of `medconv demo-data wsi` (made once, kept)
    infer: list[str] = field(default_factory=list)  # arguments of `medconv bench infer`
    infer_json: Path | None = None
    sections: tuple[str, ...] = SECTIONS
    shares: dict[str, float] = field(default_factory=lambda: dict(SHARES))


def default_tests_dir() -> Path | None:
    import medconv

    path = Path(medconv.__file__).resolve().parents[1] / "tests" / "gpu"
    return path if path.is_dir() else None


def make_plan(out: Path, smoke: bool = False, tests: Path | None = None, sections=SECTIONS) -> Plan:
    """The full GPU plan, or with `smoke` the same steps on tiny models and sizes on the CPU."""
    device = "cpu" if smoke else "cuda"
    base = Config(model="", height=0, width=0, batch_size=4, precision="bf16-mixed", mode="train", impl="medconv",
                  grad_checkpointing=True, device=device, steps=1, warmup=1)  # memory, not speed: few steps
    memory_models = ("swin_tiny_patch4_window7_224",) if smoke else MEMORY_MODELS
    sizes = (64, 128) if smoke else (1024, 2048)
    memory = [
        [replace(base, model=m, height=s, width=s, attention=a, model_args=TINY.get(m, {}) if smoke else {})
         for a in ("auto", "math") for s in sizes]  # SDPA rows first: they are the goal
        for m in memory_models
    ]
    if smoke:
        memory = [[replace(c, batch_size=1) for c in group] for group in memory]
    overhead_json = out / "train_overhead.json"
    overhead = (["--model", "convnext_atto", "--image-size", "32", "32", "--batch", "2", "--steps", "1", "--warmup",
                 "1", "--rounds", "1", "--device", "cpu", "--precision", "32"] if smoke else
                ["--model", "convnext_tiny", "--image-size", "224", "224", "--batch", "128", "--steps", "50",
                 "--warmup", "5", "--rounds", "2", "--device", "cuda", "--precision", "bf16"])
    overhead += ["--json", str(overhead_json)]
    trial = replace(base, batch_size=1, steps=1, warmup=1, height=2048, width=1024, memory_budget_gb=80.0)
    if smoke:
        max_batch = [replace(trial, model="convnext_atto", height=64, width=32, precision="32", memory_budget_gb=None,
                             model_args=TINY["convnext_atto"])]
    else:
        max_batch = [replace(trial, model=m) for m in MAX_BATCH_MODELS]
    tests = tests.resolve() if tests is not None else default_tests_dir()  # pytest runs from the repo root
    infer_slide, infer = infer_steps(out, smoke)
    return Plan(device=device, tests=tests, memory=memory,
                overhead=overhead, overhead_json=overhead_json, max_batch=max_batch,
                max_batch_limit=4 if smoke else 1024, infer_slide=infer_slide, infer=infer,
                infer_json=out / "infer.json", sections=tuple(sections))


def infer_steps(out: Path, smoke: bool) -> tuple[list[str], list[str]]:
    """The demo slide (outside `out`, which is copied back: a 20k slide is ~100 MB) and the `bench infer` call:
    default workers, as `medconv infer` picks them; four links to the slide so each slide's tiling overlaps the
    scoring of the one before, as in a folder run."""
    import tempfile

    width, height = (1536, 1024) if smoke else (20000, 16000)
    folder = Path(tempfile.gettempdir()) / f"medconv-bench-gpu-slide-{width}x{height}"
    slide = ["--out", str(folder), "--n-slides", "1", "--seed", "3", "--width", str(width), "--height", str(height)]
    path = folder / "slides" / "demo_000.tif"
    if smoke:
        infer = ["--model", "convnext_atto", "--tile-size", "64", "--target-mpp", "1.0", "--batch-size", "16",
                 "--rounds", "1", "--slides", "2", "--min-seconds", "0.2", "--accelerator", "cpu"]
    else:
        infer = ["--model", INFER_MODEL, "--tile-size", str(INFER_TILE), "--target-mpp", "0.5", "--batch-size", "256",
                 "--rounds", "2", "--slides", "4", "--min-seconds", "4"]
    return slide, ["--slide", str(path), *infer, "--json", str(out / "infer.json")]


def describe(plan: Plan, budget_s: float | None = None) -> list[str]:
    """One line per step, in order, with each section's share of the budget when there is one."""
    total = sum(plan.shares[s] for s in plan.sections)
    lines = []
    for name in plan.sections:
        if budget_s is None:
            lines.append(f"[{name}] runs to completion")
        else:
            lines.append(f"[{name}] up to {budget_s * plan.shares[name] / total:.0f} s, plus what earlier sections leave")
        if name == "tests":
            where = plan.tests or "(no tests/gpu folder: skipped)"
            lines.append(f"  python -m pytest {where} -m gpu -v")
        elif name == "memory":
            for group in plan.memory:
                c = group[0]
                kinds = ", ".join(f"{g.attention} {g.height}x{g.width}" for g in group)
                lines.append(f"  one process: {c.model} train {c.precision} batch {c.batch_size} "
                             f"checkpointing={c.grad_checkpointing}: {kinds}")
        elif name == "overhead":
            lines.append("  python -m medconv.bench.train_overhead " + " ".join(plan.overhead))
        elif name == "infer":
            lines.append("  python -m medconv.demo.wsi " + " ".join(plan.infer_slide) + "   (once; kept for later runs)")
            lines.append("  python -m medconv.bench.infer " + " ".join(plan.infer))
        elif name == "max_batch":
            for c in plan.max_batch:
                lines.append(f"  {c.model} {c.height}x{c.width} {c.precision} checkpointing={c.grad_checkpointing} "
                             f"cap={c.memory_budget_gb} GiB: batch 1 and 2, then rising near the predicted "
                             f"largest batch, then bisection (limit {plan.max_batch_limit})")
    return lines


def _meta_forward(cfg: Config) -> None:
    """Build the backbone and run it at the planned size on the meta device: shapes checked, no memory used."""
    import torch

    from medconv.models import TimmBackbone

    with torch.device("meta"):
        backbone = TimmBackbone(cfg.model, in_chans=cfg.in_chans, img_size=(cfg.height, cfg.width),
                                grad_checkpointing=cfg.grad_checkpointing, attention=cfg.attention,
                                model_args=cfg.model_args)
        backbone(torch.empty(1, cfg.in_chans, cfg.height, cfg.width))


def check_plan(plan: Plan) -> list[str]:
    """Problems that would make a step fail on the GPU, found on the CPU; empty when there are none."""
    from medconv.bench import train_overhead

    problems = []
    if "tests" in plan.sections:
        if plan.tests is None or not plan.tests.is_dir():
            problems.append(f"tests: folder {plan.tests} not found (pass --tests PATH)")
        if importlib.util.find_spec("pytest") is None:
            problems.append("tests: pytest is not installed")
    configs = [c for group in plan.memory for c in group] if "memory" in plan.sections else []
    configs += plan.max_batch if "max_batch" in plan.sections else []
    for cfg in configs:
        try:
            _meta_forward(cfg)
        except Exception as err:  # noqa: BLE001 - every problem is reported, not only the first
            problems.append(f"{cfg.model} {cfg.height}x{cfg.width} {cfg.attention}: {type(err).__name__}: {err}")
    if "overhead" in plan.sections:
        try:
            train_overhead.build_parser().parse_args(plan.overhead)
        except SystemExit:
            problems.append("overhead: train-overhead rejects " + " ".join(plan.overhead))
    if "infer" in plan.sections:
        from medconv.bench import infer

        try:
            args = infer.build_parser().parse_args(plan.infer)
            _meta_forward(Config(model=args.model, height=args.tile_size, width=args.tile_size, batch_size=1))
        except SystemExit:
            problems.append("infer: bench infer rejects " + " ".join(plan.infer))
        except Exception as err:  # noqa: BLE001
            problems.append(f"infer: {type(err).__name__}: {err}")
    return problems
