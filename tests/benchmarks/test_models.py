"""`python benchmarks/models.py` on tiny settings: real subprocess measurements, CSV/JSON/plot, max-batch search."""

from __future__ import annotations

import csv
import json
import math
import struct
from dataclasses import asdict

import pytest

from medconv.bench.results import COLUMNS

TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_largest_fitting_doubles_then_bisects(script):
    largest_fitting = script("models").largest_fitting
    calls = []

    def fits(n):
        calls.append(n)
        return n <= 37

    assert largest_fitting(fits, start=1, limit=4096) == 37
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert largest_fitting(lambda n: n <= 100, limit=48) == 48
    assert largest_fitting(lambda n: False) == 0




@pytest.mark.parametrize(("text", "size"), [("224", (224, 224)), ("2048x1024", (2048, 1024)), ("64X32", (64, 32))])
def test_parse_size(text, size, script):
    assert script("models").parse_size(text) == size


def test_cnn_runs_only_one_attention_kernel_vit_all(script):
    bench = script("models")
    args = bench.build_parser().parse_args(
        ["--models", "convnext_atto", "vit_tiny_patch16_224", "--attention", "auto", "math", "--sizes", "64",
         "--modes", "train", "--impls", "medconv", "--device", "cpu", "--precision", "16-mixed"]
    )
    configs = bench.expand(args)
    assert [(c.model, c.attention) for c in configs] == [
        ("convnext_atto", "auto"), ("vit_tiny_patch16_224", "auto"), ("vit_tiny_patch16_224", "math")
    ]
    assert {c.precision for c in configs} == {"bf16-mixed"}  # no fp16 autocast on CPU


def test_bench_measures_medconv_and_bare_timm_and_writes_outputs(tmp_path, script):
    """Two fresh subprocesses (training: medconv through Lightning, bare timm loop)."""
    code = script("models").main(
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




def test_max_batch_mode_reports_the_largest_batch_that_fits(tmp_path, monkeypatch, script):
    bench = script("models")
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
