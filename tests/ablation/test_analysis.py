"""Report maths and files on hand-made records: known means and intervals, paired bootstrap, conclusions, plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from medconv.ablation.analysis import conclusions, family_comparison, init_comparison
from medconv.ablation.records import records_table
from medconv.ablation.report import paired_bootstrap, paired_comparison
from medconv.ablation.report_writer import write_report

pytestmark = pytest.mark.usefixtures("one_thread")


def _table(shift_vit: float = -0.1, ssl_gain: dict | None = None, seeds=(0, 1, 2)) -> pd.DataFrame:
    """CNN 0.80 + seed noise, ViT `shift_vit` from it; a `mim` init adds `ssl_gain[family]`."""
    ssl_gain = ssl_gain if ssl_gain is not None else {"cnn": 0.0, "vit": 0.1}
    rows = []
    for fraction in (0.05, 1.0):
        for seed in seeds:
            noise = [0.00, 0.02, -0.01][seed % 3] + 0.05 * fraction
            for family, backbone in (("cnn", "resnet"), ("vit", "pvt")):
                base = 0.8 + noise + (shift_vit if family == "vit" else 0.0)
                rows.append(dict(backbone=backbone, family=family, init="random", init_kind="random", fraction=fraction,
                                 seed=seed, test_auroc=base))
                rows.append(dict(backbone=backbone, family=family, init="mim", init_kind="pretrain", fraction=fraction,
                                 seed=seed, test_auroc=base + ssl_gain[family]))
    return pd.DataFrame(rows)


def test_constant_shift_gives_a_zero_width_interval():
    treated, control = [0.9, 0.7, 0.8], [0.8, 0.6, 0.7]
    assert paired_bootstrap(treated, control) == pytest.approx((0.1, 0.1, 0.1))
    table = family_comparison(_table(shift_vit=-0.1, ssl_gain={"cnn": 0.0, "vit": 0.0}))
    assert table["diff"].tolist() == pytest.approx([-0.1] * 4)
    assert (table["ci_high"] - table["ci_low"]).abs().max() < 1e-12 and set(table["wins"]) == {0}


def test_bootstrap_interval_is_reproducible_and_covers_the_true_difference():
    rng = np.random.default_rng(1)
    control = rng.uniform(0.6, 0.9, 10)
    treated = control + 0.05 + rng.normal(0, 0.02, 10)
    mean, low, high = paired_bootstrap(treated, control)
    assert low < 0.05 < high and low < mean < high
    assert paired_bootstrap(treated, control) == (mean, low, high)  # fixed RNG seed
    assert math.isnan(paired_bootstrap([0.5], [0.4])[1])


def test_pairs_are_matched_on_seed_and_unmatched_runs_dropped():
    records = pd.DataFrame({"arm": ["a", "a", "a", "b", "b"], "g": ["x"] * 5, "seed": [0, 1, 2, 0, 2],
                            "m": [0.9, 0.5, 0.8, 0.7, 0.6]})
    row = paired_comparison(records, ["g"], "arm", "a", "b", "m").iloc[0]
    assert row.pairs == 2 and row["diff"] == pytest.approx(0.2) and row.wins == 2


def test_conclusions_say_who_leads_and_whether_ssl_closes_the_gap():
    lines = conclusions(_table(shift_vit=-0.1, ssl_gain={"cnn": 0.0, "vit": 0.1}))
    assert lines[0].startswith("5% labels, random init: CNN ahead")
    assert "with mim: no clear difference" in lines[1] and "SSL closes the gap" in lines[1]
    lines = conclusions(_table(shift_vit=-0.1, ssl_gain={"cnn": 0.0, "vit": 0.0}))
    assert "SSL does not close the gap" in lines[1]
    ssl = init_comparison(_table())
    assert set(ssl["backbone"]) == {"resnet", "pvt"} and ssl.loc[ssl["backbone"] == "pvt", "diff"].tolist() == pytest.approx([0.1, 0.1])


def test_report_files_from_records(tmp_path):
    folder = tmp_path / "sweep" / "records"
    folder.mkdir(parents=True)
    for row in _table().to_dict("records"):
        run_id = f"{row['backbone']}-{row['init']}-f{row['fraction']:g}-s{row['seed']}"
        record = {k: v for k, v in row.items() if k != "test_auroc"} | {
            "run_id": run_id, "status": "ok", "test": {"auroc": row["test_auroc"], "n": 100}, "val": {"auroc": 0.7},
            "wall_s": 10.0, "peak_rss_mb": 500.0 if row["family"] == "cnn" else 700.0, "train_images_per_s": 50.0}
        (folder / f"{run_id}.json").write_text(json.dumps(record))
    (folder / "pvt-random-f1-s9.json").write_text(json.dumps({"run_id": "pvt-random-f1-s9", "status": "failed", "error": "x"}))
    assert len(records_table([json.loads(p.read_text()) for p in folder.glob("*.json")])) == 24  # failed left out
    out = write_report(tmp_path / "sweep")
    assert out == tmp_path / "sweep" / "report"
    for name in ("report.md", "arms.csv", "cnn_vs_vit.csv", "ssl_vs_random.csv", "cost.csv", "auroc_vs_fraction.png", "cost.png"):
        assert (out / name).stat().st_size > 0, name
    arms = pd.read_csv(out / "arms.csv")
    cnn = arms[(arms.backbone == "resnet") & (arms.init == "random") & (arms.fraction == 0.05)].iloc[0]
    # values 0.8025, 0.8225, 0.7925: mean 0.8058, sd 0.01528, half-width 4.3027 * 0.01528 / sqrt(3) = 0.03795
    assert cnn["mean"] == pytest.approx(0.805833, abs=1e-5) and cnn["ci_high"] - cnn["mean"] == pytest.approx(0.03795, abs=1e-4)
    text = (out / "report.md").read_text()
    assert "24 finished runs, 1 failed" in text and "SSL closes the gap" in text and "pvt-random-f1-s9" in text
