"""`medconv bench models` on tiny settings: real subprocess measurements, CSV/JSON/plot, max-batch search."""

from __future__ import annotations

import csv
import json

import pytest

from medconv.bench import models as bench

TINY_CONVNEXT = json.dumps({"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]})


def test_largest_fitting_doubles_then_bisects():
    calls = []

    def fits(n):
        calls.append(n)
        return n <= 37

    assert bench.largest_fitting(fits, start=1, limit=4096) == 37
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert bench.largest_fitting(lambda n: n <= 100, limit=48) == 48
    assert bench.largest_fitting(lambda n: False) == 0


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
        ["--models", "convnext_atto", "--model-args", TINY_CONVNEXT, "--sizes", "64x96", "--precision", "32",
         "--modes", "train", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--device", "cpu",
         "--out", str(tmp_path)]
    )
    assert code == 0
    with (tmp_path / "models.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["impl"], r["mode"]) for r in rows} == {("medconv", "train"), ("timm", "train")}
    for row in rows:
        assert row["status"] == "ok", row
        assert float(row["images_per_s"]) > 0
        assert row["mem_kind"] == "cpu_peak_rss" and float(row["peak_mem_mb"]) >= float(row["base_rss_mb"]) > 0
        assert (row["height"], row["width"], row["pixels"]) == ("64", "96", str(64 * 96))
    assert all(float(r["ratio_vs_timm"]) > 0 for r in rows if r["impl"] == "medconv")
    assert len(json.loads((tmp_path / "models.json").read_text())) == 2
    assert (tmp_path / "models.png").stat().st_size > 10_000


@pytest.mark.parametrize("impl", ["medconv", "timm"])
def test_inference_measurement_in_process(impl):
    cfg = bench.Config(model="vit_tiny_patch16_224", height=64, width=32, batch_size=2, precision="bf16-mixed",
                       attention="math", mode="infer", impl=impl, steps=1, warmup=1,
                       model_args={"depth": 1, "embed_dim": 32, "num_heads": 2})
    row = bench.measure(cfg)
    assert row["status"] == "ok" and row["images_per_s"] > 0 and row["pixels"] == 64 * 32


def test_max_batch_mode_reports_the_largest_batch_that_fits(tmp_path, monkeypatch):
    """The search and its output, with the subprocess replaced by a fake that fits up to batch 5."""
    seen = []

    def fake_run(cfg, timeout_s=0):
        seen.append(cfg.batch_size)
        status = "ok" if cfg.batch_size <= 5 else "oom"
        return bench.asdict(cfg) | {"status": status, "pixels": cfg.height * cfg.width, "peak_mem_mb": 10.0 * cfg.batch_size,
                                    "images_per_s": 1.0, "mem_kind": "cuda_peak_allocated"}

    monkeypatch.setattr(bench, "run_isolated", fake_run)
    code = bench.main(["--models", "convnext_atto", "--sizes", "2048x1024", "--max-batch", "--grad-checkpointing",
                       "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    assert seen == [1, 2, 4, 8, 6, 5]
    with (tmp_path / "models_max_batch.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["max_batch"], row["batch_size"], row["peak_mem_mb"], row["grad_checkpointing"]) == ("5", "5", "50", "True")
