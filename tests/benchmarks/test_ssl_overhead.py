"""`python benchmarks/ssl_overhead.py` on tiny models: both loops pretrain with the same objective, and the ratio is the one saved."""

from __future__ import annotations

import json
import math

import pytest


@pytest.mark.parametrize("method", ["mim", "dino"])
def test_bench_ssl_times_both_loops(method, tmp_path, capsys, script):
    out = tmp_path / "ssl.json"
    argv = ["--method", method, "--models", "convnext_atto", "--image-size", "64", "64", "--batch", "2", "--steps", "2",
            "--warmup", "1", "--rounds", "1", "--device", "cpu", "--precision", "32", "--json", str(out)]
    assert script("ssl_overhead").main(argv) == 0
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["model"] == "convnext_atto" and row["method"] == method
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("bare_images_per_s", "medconv_images_per_s"))
    assert row["ratio"] == pytest.approx(row["medconv_images_per_s"] / row["bare_images_per_s"])
    assert f"ratio {row['ratio']:.3f}" in capsys.readouterr().out
