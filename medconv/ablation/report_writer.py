"""`medconv ablate report DIR`: the records of a sweep as tables (CSV + Markdown), plots and conclusions.

Every file is written atomically into the report folder (default `DIR/report`), so an interrupted report never
leaves a table that looks complete; the records themselves are only read.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from medconv.ablation.analysis import arms_table, conclusions, cost_table, family_comparison, family_table, init_comparison
from medconv.ablation.oof import oof_predictions, oof_tables
from medconv.ablation.oof_breakdown import pooled_calibration, subgroup_tables
from medconv.ablation.plots import cost, metric_vs_fraction
from medconv.ablation.records import load_records, records_dir, records_table
from medconv.ablation.report import to_markdown
from medconv.errors import InputFileError
from medconv.io.atomic import atomic_path, write_text


def tables(table: pd.DataFrame, metric: str = "auroc") -> dict[str, pd.DataFrame]:
    """Every table of the report, by file stem."""
    return {"arms": arms_table(table, metric), "families": family_table(table, metric),
            "cnn_vs_vit": family_comparison(table, metric), "ssl_vs_random": init_comparison(table, metric),
            "cost": cost_table(table), "runs": table}


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path


def write_report(directory: str | Path, out: str | Path | None = None, metric: str = "auroc",
                 subgroups: Sequence[str] = (), manifest: str | Path | None = None) -> Path:
    """Write the report of the records under `directory` into `out` (default `<directory>/report`); k-fold sweeps
    also get their pooled out-of-fold calibration and, for each of `subgroups`, AUROC per subgroup value."""
    records = load_records(directory)
    folder = records_dir(directory)
    out = Path(out) if out else folder.parent / "report"
    table = records_table(records, metric)
    if table.empty:
        raise InputFileError(f"{folder}: no finished (status ok) records to report on; run the sweep first")
    try:
        oof = oof_tables(records)
    except ValueError as err:  # overlapping folds or conflicting labels in the runs' predictions
        raise InputFileError(f"{folder}: cannot pool the out-of-fold predictions: {err}") from err
    if oof:
        predictions = oof_predictions(records)
        oof |= {"oof_calibration": pooled_calibration(predictions, plots=out)} | subgroup_tables(
            predictions, subgroups, Path(manifest) if manifest else None)
    parts = tables(table, metric) | oof
    for name, frame in parts.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    failed = [r["run_id"] for r in records if r.get("status") != "ok"]
    sections = [
        f"# Ablation report ({len(table)} finished runs{f', {len(failed)} failed' if failed else ''})", "",
        "## Conclusions", "", *[f"- {line}" if not line.startswith("  ") else f"  - {line.strip()}" for line in conclusions(table, metric)], "",
        *_oof_sections(parts),
        f"## Test {metric} per arm (mean over {'runs (seeds x folds)' if 'oof_arms' in parts else 'seeds'}, 95% t-interval cut to "
        "[0, 1])", "", to_markdown(parts["arms"]), "",
        f"## Test {metric} per family (mean over the family's backbones per seed)", "", to_markdown(parts["families"]), "",
        "## ViT minus CNN, paired by seed (95% paired bootstrap CI; t-interval beside it)", "", to_markdown(parts["cnn_vs_vit"]), "",
        "## Pretrained init minus random init, paired by seed", "",
        to_markdown(parts["ssl_vs_random"]) if len(parts["ssl_vs_random"]) else "(no non-random init in these records)", "",
        "## Cost per backbone (median per run)", "", to_markdown(parts["cost"]), "",
        f"![test {metric} vs label fraction]({metric}_vs_fraction.png)", "", "![cost](cost.png)", "",
    ]
    if failed:
        sections += ["## Failed runs (rerun the sweep to retry them)", "", *[f"- {r}" for r in failed], ""]
    _save(metric_vs_fraction(table, metric), out / f"{metric}_vs_fraction.png")
    _save(cost(table), out / "cost.png")
    write_text(out / "report.md", "\n".join(sections))
    return out


def _oof_sections(parts: dict[str, pd.DataFrame]) -> list[str]:
    """k-fold sweeps: the pooled out-of-fold AUROC per arm and seed, and the paired arm comparisons on its images."""
    if "oof_arms" not in parts:
        return []
    arms = parts["oof_arms"][["arm", "seed", "folds", "n", "patients", "coverage", "auroc", "ci_low", "ci_high"]]
    lines = ["## Pooled out-of-fold AUROC per arm and seed (every image scored by the fold model that never saw its "
             "patient; 95% patient-bootstrap CI)", "", to_markdown(arms), ""]
    paired = parts["oof_paired"]
    if len(paired):
        shown = paired[["a", "b", "seed", "n", "diff", "delong_ci_low", "delong_ci_high", "delong_p", "boot_ci_low", "boot_ci_high"]]
        lines += ["## Paired arm differences on the same out-of-fold images (a - b: DeLong CI and p; paired patient-bootstrap CI)",
                  "", to_markdown(shown), ""]
    if "oof_calibration" in parts:
        lines += ["## Calibration of the pooled out-of-fold probabilities (ECE: 10 equal-width bins; reliability_*.png)",
                  "", to_markdown(parts["oof_calibration"]), ""]
    for name in sorted(k for k in parts if k.startswith("oof_by_")):
        lines += [f"## Pooled out-of-fold AUROC by {name[len('oof_by_'):]} (95% patient-bootstrap CI)", "",
                  to_markdown(parts[name]), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medconv ablate report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="the sweep's --out folder (or its records/ folder)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default DIR/report)")
    parser.add_argument("--metric", default="auroc", help="test metric to report (a key of test_metrics.json)")
    parser.add_argument("--subgroups", nargs="*", default=[], help="k-fold sweeps: AUROC per value of these manifest "
                        "columns (e.g. density site scanner)")
    parser.add_argument("--manifest", type=Path, default=None, help="the manifest the runs trained on, for --subgroups "
                        "columns their predictions do not carry")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.dir, args.out, args.metric, args.subgroups, args.manifest)
    except FileNotFoundError as err:
        raise InputFileError(str(err)) from err
    print(f"report written to {out} (report.md, *.csv, {args.metric}_vs_fraction.png, cost.png)")
    print((out / "report.md").read_text().split("## Test")[0].strip())
    return 0
