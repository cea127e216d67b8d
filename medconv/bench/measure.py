"""One benchmark measurement in this process: a `Config` in, a result row (images/s, peak memory) out.

A medconv row trains the real `ClassificationModule` through a Lightning Trainer (inference: the module
itself); a timm row runs timm's model in a bare AdamW + autocast loop on the same batch, so framework
overhead is the ratio of the two. Run it through `medconv.bench.isolated` so each row's peak memory is
its own and an out-of-memory error cannot poison the next row.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field

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


def _step_timer(warmup: int, last: int, device: str):
    """A Lightning callback holding the wall clock at the start of the first timed step and the end of the last.

    Ending at the last step, not when `fit` returns, leaves out the epoch end and teardown (moving the
    model back to the CPU): one-off costs that the bare loop does not have and a long run does not notice.
    """
    import lightning as L

    class StepTimer(L.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                _sync(device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == last:
                _sync(device)
                self.end = time.perf_counter()

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
    timer = _step_timer(cfg.warmup, total - 1, cfg.device)
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
    return timer.end - timer.start


def _train_timm(cfg: Config) -> float:
    import torch

    from medconv import keys
    from medconv.models.attention import KernelScope

    model = _build_timm(cfg).to(cfg.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    dtype = _autocast_dtype(cfg.precision)
    scaler = torch.amp.GradScaler(cfg.device, enabled=dtype == torch.float16)
    batch = _batch(cfg)
    x, y = batch[keys.IMAGE], batch[keys.LABEL]
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
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

    from medconv import keys
    from medconv.models.attention import KernelScope

    model = _build_medconv(cfg) if cfg.impl == "medconv" else _build_timm(cfg)
    model = model.to(cfg.device).eval()
    dtype = _autocast_dtype(cfg.precision)
    x = _batch(cfg)[keys.IMAGE]
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

    if cfg.device == "cuda":  # set every time: an earlier row in this process may have capped it
        total = torch.cuda.get_device_properties(0).total_memory
        budget = cfg.memory_budget_gb * 2**30 / total if cfg.memory_budget_gb else 1.0
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget))
    row = asdict(cfg) | {"pixels": cfg.height * cfg.width, "status": "ok", "images_per_s": float("nan")}
    row["model_args"] = json.dumps(cfg.model_args, sort_keys=True) if cfg.model_args else ""
    row["base_rss_mb"] = round(_rss_mb(), 1)
    try:
        if cfg.device == "cuda":  # a row measured after others in one process starts from what they left
            row["start_alloc_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
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
        props = torch.cuda.get_device_properties(0)
        row["device_name"], row["device_total_mb"] = props.name, round(props.total_memory / 2**20)
    else:
        row["peak_mem_mb"] = _peak_rss_mb()
        row["mem_kind"] = "cpu_peak_rss"
        if cfg.memory_budget_gb and row["status"] == "ok" and row["peak_mem_mb"] > cfg.memory_budget_gb * 1024:
            row["status"] = "oom"
    row["peak_mem_mb"] = round(row["peak_mem_mb"], 1)
    return row
