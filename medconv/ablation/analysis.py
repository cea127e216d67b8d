"""The ablation's answers from its records table: pure functions, no files, so the notebook and the report agree.

Arms are backbone x init x label fraction; seeds are the replicates. CNN and ViT are compared per family: the
family's score for a seed is the mean over its backbones (each seed trained every backbone on the same label
subset), then the families are paired by seed. Inits are compared per backbone, paired by seed.
"""

from __future__ import annotations

import math

import pandas as pd

from medconv.ablation.report import paired_comparison, summarise

FAMILY_NAMES = {"cnn": "CNN", "vit": "ViT"}


def arms_table(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Mean and 95% t-interval over seeds of the test metric (cut to [0, 1]), per backbone x init x fraction."""
    return summarise(table, ["family", "backbone", "init", "fraction"], f"test_{metric}")


def family_scores(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """One row per family x init x fraction x seed: the mean test metric over the family's backbones."""
    column = f"test_{metric}"
    return table.groupby(["family", "init", "init_kind", "fraction", "seed"], as_index=False)[column].mean()


def family_table(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    return summarise(family_scores(table, metric), ["family", "init", "fraction"], f"test_{metric}")


def family_comparison(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """ViT minus CNN per init and fraction, paired by seed (bootstrap and t intervals)."""
    return paired_comparison(family_scores(table, metric), ["init", "fraction"], "family", "vit", "cnn", f"test_{metric}")


def init_comparison(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Each non-random init minus each random init, per backbone and fraction, paired by seed."""
    kinds = table.drop_duplicates("init").set_index("init")["init_kind"]
    controls = [name for name, kind in kinds.items() if kind == "random"]
    parts = [paired_comparison(table, ["family", "backbone", "fraction"], "init", treated, control, f"test_{metric}")
             for control in controls for treated in kinds.index if kinds[treated] != "random"]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per backbone: median training throughput (images/s), peak memory and wall time per run."""
    columns = {"train_images_per_s": "images_per_s", "peak_rss_mb": "peak_rss_mb", "cuda_peak_mb": "cuda_peak_mb",
               "wall_s": "wall_s_per_run"}
    present = [c for c in columns if c in table.columns]
    out = table.groupby(["family", "backbone"], as_index=False)[present].median().rename(columns=columns)
    return out.assign(runs=table.groupby(["family", "backbone"]).size().to_numpy())


def _ci(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"{low:+.3f} to {high:+.3f}"


def _clear(row: pd.Series) -> bool:
    """The paired bootstrap interval excludes zero."""
    return not math.isnan(row["ci_low"]) and (row["ci_low"] > 0 or row["ci_high"] < 0)


def conclusions(table: pd.DataFrame, metric: str = "auroc") -> list[str]:
    """Plain sentences: which family is ahead at each fraction, and whether each SSL init closes the gap."""
    if table.empty:
        return ["No finished runs yet."]
    comparison = family_comparison(table, metric)
    if comparison.empty:
        return ["Only one family (or no seed shared by both), so CNN and ViT cannot be compared."]
    kinds = table.drop_duplicates("init").set_index("init")["init_kind"].to_dict()
    lines = []
    for fraction, rows in comparison.groupby("fraction", sort=True):
        by_init = {r["init"]: r for _, r in rows.iterrows()}
        randoms = [i for i in by_init if kinds.get(i) == "random"]
        for init in randoms or list(by_init):  # without a random arm, each init stands alone
            row = by_init[init]
            lines.append(f"{fraction:.0%} labels, {init} init: {_lead(row)} (ViT - CNN {row['diff']:+.3f}, "
                         f"95% CI {_ci(row['ci_low'], row['ci_high'])}, {int(row['pairs'])} paired seed{'s' if row['pairs'] != 1 else ''}).")
            for ssl, srow in by_init.items():
                if kinds.get(ssl) == "random" or not randoms:
                    continue
                lines.append(f"  with {ssl}: {_lead(srow)} (ViT - CNN {srow['diff']:+.3f}, 95% CI "
                             f"{_ci(srow['ci_low'], srow['ci_high'])}); {_closes(row, srow)}.")
    return lines


def _lead(row: pd.Series) -> str:
    ahead = "ViT" if row["diff"] > 0 else "CNN"
    return f"{ahead} ahead" if _clear(row) else "no clear difference between CNN and ViT"


def _closes(random_row: pd.Series, ssl_row: pd.Series) -> str:
    before, after = random_row["diff"], ssl_row["diff"]
    if _clear(random_row) and not _clear(ssl_row):
        return "SSL closes the gap"
    if _clear(random_row) and _clear(ssl_row) and math.copysign(1, before) != math.copysign(1, after):
        return "SSL reverses the gap"
    if not _clear(random_row):
        return "there was no clear gap to close"
    return "SSL narrows the gap but does not close it" if abs(after) < abs(before) else "SSL does not close the gap"
