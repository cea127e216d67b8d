"""Benchmark rows as files: CSV (fixed columns), JSON (every field) and a memory / speed plot, each written atomically."""

from __future__ import annotations

import csv
from pathlib import Path

from medconv.io.atomic import atomic_path, write_json

COLUMNS = [
    "model", "impl", "mode", "height", "width", "pixels", "batch_size", "precision", "attention",
    "grad_checkpointing", "channels_last", "compile", "device", "images_per_s", "ratio_vs_timm", "peak_mem_mb",
    "mem_kind", "base_rss_mb", "status", "steps", "warmup", "memory_budget_gb", "max_batch", "model_args", "device_name",
]


def write_results(rows: list[dict], out: Path, stem: str = "models", with_plot: bool = True) -> dict[str, Path]:
    """`stem`.csv (the COLUMNS, in order), `stem`.json (every field) and the plot, each written atomically."""
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    with atomic_path(paths["csv"]) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    write_json(paths["json"], rows)
    if with_plot:  # memory and speed against pixels: nothing to draw for max-batch rows
        paths["plot"] = out / f"{stem}.png"
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
    with atomic_path(path) as tmp:  # the temp name keeps .png, which savefig reads the format from
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
