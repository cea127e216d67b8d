"""What `medconv bench gpu` measures with: rows in this process and in worker processes, and the largest-batch search."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest

from medconv.bench.isolated import run_many
from medconv.bench.measure import Config, measure
from medconv.bench.search import candidates, climb, predict_max_batch

TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}


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
