"""`python benchmarks/gresnet_fuse.py` on a tiny model: runs, reports both speeds and an exact fold, writes JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_writes_json(tmp_path, capsys, script):
    out = tmp_path / "sub" / "gresnet_fuse.json"
    argv = ["--model", "gresnet_tiny", "--img-size", "64", "48", "--batch", "2", "--iters", "2", "--warmup", "0"]
    assert script("gresnet_fuse").main([*argv, "--json", str(out)]) == 0
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


def test_the_documented_command_runs_the_script_from_a_checkout(tmp_path):
    """`python benchmarks/gresnet_fuse.py ...` as benchmarks/README.md gives it: a script, not an installed module."""
    out = tmp_path / "r.json"
    argv = ["--model", "gresnet_tiny", "--img-size", "48", "--batch", "1", "--iters", "1", "--threads", "1"]
    done = subprocess.run([sys.executable, "benchmarks/gresnet_fuse.py", *argv, "--channels-last", "--naive", "--json",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["channels_last"] is True and result["input"] == [1, 3, 48, 48]
    assert result["max_rel_diff"] < 1e-4 < result["naive_max_rel_diff"]  # the naive fold is wrong at borders
    assert math.isfinite(result["fused_over_naive"])
    assert result["fused_over_naive"] == pytest.approx(result["fused_img_s"] / result["naive_img_s"], rel=1e-2)


def test_medconv_bench_names_the_script_a_moved_command_became(capsys):
    from medconv.bench.cli import main

    assert main(["gresnet-fuse", "--model", "gresnet_tiny"]) == 2
    assert "`python benchmarks/gresnet_fuse.py --model gresnet_tiny`" in capsys.readouterr().err


def test_bench_rejects_three_sizes(script):
    with pytest.raises(SystemExit):
        script("gresnet_fuse").main(["--img-size", "1", "2", "3"])
