"""`medconv bench gresnet-fuse` on a tiny model: runs, reports both speeds and an exact fold, writes JSON."""

from __future__ import annotations

import json
import math

import pytest

from medconv.bench import gresnet_fuse


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "gresnet_fuse.json"
    argv = ["--model", "gresnet_tiny", "--img-size", "64", "48", "--batch", "2", "--iters", "2", "--warmup", "0"]
    assert gresnet_fuse.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "gresnet_tiny" and result["input"] == [2, 3, 64, 48]
    assert (result["iters"], result["dtype"], result["device"]) == (2, "float32", "cpu")
    assert all(math.isfinite(result[k]) for k in ("split_img_s", "fused_img_s", "fused_over_split"))
    assert result["fused_over_split"] == pytest.approx(result["fused_img_s"] / result["split_img_s"], rel=1e-2)
    # exact fold: float32 rounding only; a zero difference would mean both sides ran the same model
    assert 0 < result["max_abs_diff"] and result["max_rel_diff"] < 1e-4
    assert "naive_img_s" not in result  # only with --naive
    assert [p.name for p in out.parent.iterdir()] == ["gresnet_fuse.json"]  # no temp file left beside it
    printed = capsys.readouterr().out
    assert "fused/split" in printed and "max |diff|" in printed


def test_bench_is_routed_from_the_cli(tmp_path):
    from medconv.bench.cli import main

    out = tmp_path / "r.json"
    argv = ["gresnet-fuse", "--model", "gresnet_tiny", "--img-size", "48", "--batch", "1", "--iters", "1"]
    assert main([*argv, "--channels-last", "--naive", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["channels_last"] is True and result["input"] == [1, 3, 48, 48]
    assert result["max_rel_diff"] < 1e-4 < result["naive_max_rel_diff"]  # the naive fold is wrong at borders
    assert math.isfinite(result["fused_over_naive"])
    assert result["fused_over_naive"] == pytest.approx(result["fused_img_s"] / result["naive_img_s"], rel=1e-2)


def test_bench_rejects_three_sizes():
    with pytest.raises(SystemExit):
        gresnet_fuse.main(["--img-size", "1", "2", "3"])
