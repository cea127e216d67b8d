"""`medconv bench models` on tiny settings: real subprocess measurements, CSV/JSON/plot, max-batch search."""

from __future__ import annotations

import csv
import json
import math
import struct
from dataclasses import asdict

import pytest

from medconv.bench import models as bench
from medconv.bench.isolated import run_many
from medconv.bench.measure import Config, measure
from medconv.bench.results import COLUMNS
from medconv.bench.search import candidates, climb, largest_fitting, predict_max_batch

TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_largest_fitting_doubles_then_bisects():
    calls = []

    def fits(n):
        calls.append(n)
        return n <= 37

    assert largest_fitting(fits, start=1, limit=4096) == 37
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert largest_fitting(lambda n: n <= 100, limit=48) == 48
    assert largest_fitting(lambda n: False) == 0


def test_candidates_rise_around_the_prediction_or_double_without_one():
    assert candidates(100, limit=1024) == [90, 95, 100, 105]
    assert candidates(100, limit=96) == [90, 95, 96]
    assert candidates(3, limit=1024) == [3]  # batch 1 and 2 are the probes, never candidates
    assert candidates(None, limit=40) == [4, 8, 16, 32, 40]
    assert candidates(None, limit=2) == []


def fake_trial(fixed: float, per_image: float, capacity: float, calls: list[int]):
    def trial(batch: int) -> dict:
        calls.append(batch)
        peak = fixed + per_image * batch
        return {"batch_size": batch, "peak_mem_mb": peak, "status": "ok" if peak <= capacity else "oom"}

    return trial


def test_climb_probes_predicts_rises_then_bisects():
    calls: list[int] = []
    rows = climb(fake_trial(1000, 300, 10_000, calls), capacity=10_000, limit=1024)  # 30 fit, 31 does not
    assert calls == [1, 2, 27, 28, 30, 31]  # 90-105 % of the prediction (30), rising; 31 is the first failure
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["oom"]
    calls.clear()
    climb(fake_trial(1000, 300, 9_500, calls), capacity=10_000, limit=1024)  # the prediction is high: 28 fit
    assert calls == [1, 2, 27, 28, 30, 29]  # 30 fails, then the gap to 28 is bisected
    calls.clear()
    climb(fake_trial(1000, 300, 2_000, calls), capacity=10_000, limit=1024)  # far lower: bisect from 2
    assert calls == [1, 2, 27, 14, 8, 5, 3, 4] and max(b for b in calls if 1000 + 300 * b <= 2000) == 3
    calls.clear()
    assert [r["status"] for r in climb(fake_trial(1000, 300, 500, calls), 10_000, 1024)] == ["oom"]


def test_predict_max_batch_from_two_probes():
    # 1000 MiB fixed + 300 MiB per image: batch 1 -> 1300, batch 2 -> 1600; 10,000 MiB fits 30 images
    assert predict_max_batch(1300, 1600, 10_000) == 30
    assert predict_max_batch(1300, 1600, 10_000, limit=16) == 16
    assert predict_max_batch(1300, 1300, 10_000) is None  # no per-image growth measured
    assert predict_max_batch(1300, 1600, float("inf")) is None  # no capacity known (CPU)
    assert predict_max_batch(1300, float("nan"), 10_000) is None


@pytest.mark.parametrize(("text", "size"), [("224", (224, 224)), ("2048x1024", (2048, 1024)), ("64X32", (64, 32))])
def test_parse_size(text, size):
    assert bench.parse_size(text) == size


def test_cnn_runs_only_one_attention_kernel_vit_all():
    args = bench.build_parser().parse_args(
        ["--models", "convnext_atto", "vit_tiny_patch16_224", "--attention", "auto", "math", "--sizes", "64",
         "--modes", "train", "--impls", "medconv", "--device", "cpu", "--precision", "16-mixed"]
    )
    configs = bench.expand(args)
    assert [(c.model, c.attention) for c in configs] == [
        ("convnext_atto", "auto"), ("vit_tiny_patch16_224", "auto"), ("vit_tiny_patch16_224", "math")
    ]
    assert {c.precision for c in configs} == {"bf16-mixed"}  # no fp16 autocast on CPU


def test_bench_measures_medconv_and_bare_timm_and_writes_outputs(tmp_path):
    """Two fresh subprocesses (training: medconv through Lightning, bare timm loop); inference runs in-process below."""
    code = bench.main(
        ["--models", "convnext_atto", "--model-args", json.dumps(TINY_CONVNEXT), "--sizes", "64x96", "--precision",
         "32", "--modes", "train", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--device", "cpu",
         "--out", str(tmp_path)]
    )
    assert code == 0
    with (tmp_path / "models.csv").open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert sorted((r["impl"], r["mode"]) for r in rows) == [("medconv", "train"), ("timm", "train")]
    for row in rows:
        assert row["status"] == "ok", row
        assert math.isfinite(float(row["images_per_s"]))
        assert row["mem_kind"] == "cpu_peak_rss" and float(row["peak_mem_mb"]) >= float(row["base_rss_mb"]) > 0
        assert (row["height"], row["width"], row["pixels"], row["batch_size"]) == ("64", "96", str(64 * 96), "2")
    by_impl = {r["impl"]: r for r in rows}
    ratio = float(by_impl["medconv"]["ratio_vs_timm"])  # the figure a user reads: medconv over bare timm
    assert ratio == pytest.approx(float(by_impl["medconv"]["images_per_s"]) / float(by_impl["timm"]["images_per_s"]),
                                  rel=0.01)
    assert float(by_impl["timm"]["ratio_vs_timm"]) == 1.0  # the baseline against itself
    assert [r["impl"] for r in json.loads((tmp_path / "models.json").read_text())] == [r["impl"] for r in rows]
    assert png_size(tmp_path / "models.png") == (1440, 540)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("impl", ["medconv", "timm"])
def test_inference_measurement_in_process(impl):
    cfg = Config(model="vit_tiny_patch16_224", height=64, width=32, batch_size=2, precision="bf16-mixed",
                 attention="math", mode="infer", impl=impl, steps=1, warmup=1,
                 model_args={"depth": 1, "embed_dim": 32, "num_heads": 2})
    row = measure(cfg)
    assert row["status"] == "ok" and math.isfinite(row["images_per_s"])
    assert (row["impl"], row["mode"], row["batch_size"], row["pixels"]) == (impl, "infer", 2, 64 * 32)


def test_rows_sharing_a_process_come_back_in_order_and_a_timeout_names_the_rest():
    cfg = Config(model="convnext_atto", height=32, width=32, batch_size=1, precision="32", steps=1, warmup=0,
                 model_args=TINY_CONVNEXT)
    rows = run_many([cfg, Config(**(asdict(cfg) | {"model": "no_such_model"}))], timeout_s=600)
    assert [r["model"] for r in rows] == ["convnext_atto", "no_such_model"]
    assert rows[0]["status"] == "ok" and rows[1]["status"].startswith("error")  # the bad row says why
    rows = run_many([cfg, cfg], timeout_s=1)  # not even the imports finish in a second
    assert [r["status"] for r in rows] == ["error: timeout after 1s"] * 2


def test_max_batch_mode_reports_the_largest_batch_that_fits(tmp_path, monkeypatch):
    """The search and its output, with the subprocess replaced by a fake that fits up to batch 5."""
    seen = []

    def fake_run(cfg, timeout_s=0):
        seen.append(cfg.batch_size)
        status = "ok" if cfg.batch_size <= 5 else "oom"
        return asdict(cfg) | {"status": status, "pixels": cfg.height * cfg.width, "peak_mem_mb": 10.0 * cfg.batch_size,
                              "images_per_s": 1.0, "mem_kind": "cuda_peak_allocated"}

    monkeypatch.setattr(bench, "run_isolated", fake_run)
    code = bench.main(["--models", "convnext_atto", "--sizes", "2048x1024", "--max-batch", "--grad-checkpointing",
                       "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    assert seen == [1, 2, 4, 8, 6, 5]
    with (tmp_path / "models_max_batch.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["max_batch"], row["batch_size"], row["peak_mem_mb"], row["grad_checkpointing"]) == ("5", "5", "50", "True")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models_max_batch.csv", "models_max_batch.json"]
