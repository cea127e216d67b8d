"""`medconv bench train-overhead` on a tiny model: both loops train, and the ratio is the one printed and saved."""

from __future__ import annotations

import json
import math

import pytest

from medconv.bench import train_overhead


def test_train_overhead_writes_both_rates_and_their_ratio(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    argv = ["--model", "convnext_atto", "--image-size", "32", "48", "--batch", "2", "--steps", "2", "--warmup", "1",
            "--rounds", "1", "--device", "cpu", "--precision", "32", "--json", str(out)]
    assert train_overhead.main(argv) == 0
    result = json.loads(out.read_text())
    assert (result["model"], result["image_size"], result["batch"], result["steps"], result["rounds"]) == (
        "convnext_atto", [32, 48], 2, 2, 1)
    assert all(math.isfinite(result[k]) for k in ("bare_images_per_s", "medconv_images_per_s", "ratio"))
    assert 0 <= result["medconv_fit_tail_s"] < 60  # what fit costs after the last step, outside the ratio
    assert result["ratio"] == pytest.approx(result["medconv_images_per_s"] / result["bare_images_per_s"])
    assert f"ratio {result['ratio']:.3f}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["overhead.json"]
