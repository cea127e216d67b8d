"""The ablation's figures: test metric against label fraction, and what each backbone costs. Figures are built
without pyplot (no global state), returned for a notebook to show and saved by the report writer."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from medconv.ablation.analysis import arms_table, cost_table

LINESTYLES = ["-", "--", ":", "-."]


def metric_vs_fraction(table: pd.DataFrame, metric: str = "auroc") -> Figure:
    """Mean test metric over seeds against label fraction (log x), one line per backbone/init, 95% CI bands (the
    t-interval over seeds cut to [0, 1], so no band reaches past a perfect score)."""
    arms = arms_table(table, metric)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    backbones = sorted(arms["backbone"].unique()) if len(arms) else []
    inits = sorted(arms["init"].unique()) if len(arms) else []
    for (backbone, init), line in arms.groupby(["backbone", "init"], sort=True):
        line = line.sort_values("fraction")
        family = line["family"].iloc[0]
        colour = f"C{backbones.index(backbone) % 10}"
        style = LINESTYLES[inits.index(init) % len(LINESTYLES)]
        ax.plot(line["fraction"], line["mean"], style, color=colour, marker="o" if family == "cnn" else "s",
                label=f"{backbone} ({family}), {init}")
        band = line.dropna(subset=["ci_low"])
        if len(band):
            ax.fill_between(band["fraction"], band["ci_low"], band["ci_high"], color=colour, alpha=0.12, lw=0)
    ax.set_xscale("log")
    fractions = sorted(arms["fraction"].unique()) if len(arms) else []
    if fractions:
        ax.set_xticks(fractions, [f"{f:.0%}" if f >= 0.01 else f"{f:.1%}" for f in fractions])
        ax.minorticks_off()
    ax.set(xlabel="label fraction (log scale)", ylabel=f"test {metric}",
           title=f"Test {metric} vs label fraction (mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    if backbones:
        ax.legend(fontsize=7, loc="lower right")
    return fig


def cost(table: pd.DataFrame) -> Figure:
    """Training throughput and peak memory per backbone (median over its runs), side by side."""
    costs = cost_table(table) if len(table) else pd.DataFrame(columns=["backbone", "family"])
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    names = [f"{b}\n({f})" for b, f in zip(costs["backbone"], costs["family"], strict=True)]
    colours = ["C0" if f == "cnn" else "C1" for f in costs["family"]]
    left.bar(names, costs.get("images_per_s", pd.Series(dtype=float)).fillna(0), color=colours)
    left.set(ylabel="train images / s", title="Throughput (median)")
    gpu = "cuda_peak_mb" in costs and costs["cuda_peak_mb"].notna().any()
    memory = costs["cuda_peak_mb"] if gpu else costs.get("peak_rss_mb", pd.Series(dtype=float))
    right.bar(names, memory.fillna(0), color=colours)
    right.set(ylabel="MiB", title="Peak GPU memory" if gpu else "Peak RAM (process tree RSS)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    return fig

