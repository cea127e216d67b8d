"""`medconv bench gresnet-fuse` on a tiny model: runs, reports both speeds and an exact fold, writes JSON."""

from __future__ import annotations

import json

import pytest
import torch

from medconv.bench import gresnet_fuse


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The benchmark may set torch's thread count (--threads); keep the session's setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "gresnet_fuse.json"
    argv = ["--model", "gresnet_tiny", "--img-size", "64", "48", "--batch", "2", "--iters", "2", "--warmup", "0"]
    assert gresnet_fuse.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "gresnet_tiny" and result["input"] == [2, 3, 64, 48]
    assert result["split_img_s"] > 0 and result["fused_img_s"] > 0
    assert result["fused_over_split"] == pytest.approx(result["fused_img_s"] / result["split_img_s"], rel=1e-2)
    assert 0 < result["max_abs_diff"] and result["max_rel_diff"] < 1e-4  # non-trivial model, exact fold
    assert not list(out.parent.glob("*.tmp"))
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
    assert result["naive_img_s"] > 0


def test_bench_rejects_three_sizes():
    with pytest.raises(SystemExit):
        gresnet_fuse.main(["--img-size", "1", "2", "3"])
