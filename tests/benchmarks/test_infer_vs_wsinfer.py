"""`python benchmarks/infer_vs_wsinfer.py` without wsinfer: its options, the model config wsinfer gets, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def test_it_takes_bench_infer_options_and_where_wsinfer_lives(script, tmp_path):
    peer = script("infer_vs_wsinfer")
    args = peer.build_parser().parse_args(["--slide", "s.tif", "--model", "resnet18d", "--slides", "4", "--precision",
                                           "32-true", "--peer-venv", str(tmp_path / "venv")])
    assert (args.model, args.slides, args.precision, args.peer_venv) == ("resnet18d", 4, "32-true", tmp_path / "venv")
    assert peer.build_parser().parse_args(["--slide", "s.tif", "--model", "m"]).peer_venv == peer.DEFAULT_VENV


def test_wsinfer_reads_the_same_tiles_resize_and_normalisation(script):
    config = script("infer_vs_wsinfer").wsinfer_config(["normal", "tumor"], 256, 0.5, (224, 224), (0.5,) * 3, (0.25,) * 3)
    assert (config["patch_size_pixels"], config["spacing_um_px"], config["num_classes"]) == (256, 0.5, 2)
    assert [t["name"] for t in config["transform"]] == ["Resize", "ToTensor", "Normalize"]
    assert config["transform"][0]["arguments"] == {"size": [224, 224]}
    assert config["transform"][2]["arguments"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    same = script("infer_vs_wsinfer").wsinfer_config(["a", "b"], 224, 0.5, (224, 224), (0.0,) * 3, (1.0,) * 3)
    assert [t["name"] for t in same["transform"]] == ["ToTensor", "Normalize"]  # no resize when sizes match


def test_the_near_empty_model_exports_to_torchscript(script, tmp_path: Path):
    peer = script("infer_vs_wsinfer")
    path = peer.export_torchscript(peer.NearEmpty(3), tmp_path / "m.pt", (32, 32))
    assert torch.jit.load(str(path))(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_report_gives_medconv_over_wsinfer(script):
    result = {"loader": {"tiles_per_s": 800.0}, "model": {"tiles_per_s": 100.0},
              "end_to_end": {"slide_tiles_per_s": 90.0},
              "wsinfer": {"loader": {"inference_tiles_per_s": 400.0},
                          "model": {"tiles": 1000, "wall_s": 40.0, "stages_tiles_per_s": 45.0,
                                    "inference_tiles_per_s": 60.0}}}
    text = script("infer_vs_wsinfer").peer_report(result)
    assert "medconv loader 2.00x" in text and "medconv per slide 2.00x" in text
    assert "60.0 tiles/s (0.60 of the model bound)" in text and "whole command 25.0 tiles/s" in text


@pytest.mark.slow
def test_main_puts_wsinfer_beside_bench_infer_on_the_same_slide(script, tmp_path, monkeypatch, capsys):
    """The whole script on a tiny demo slide, wsinfer's process replaced by a stand-in that records what it got."""
    from medconv.demo.wsi import main as demo_wsi

    peer = script("infer_vs_wsinfer")
    assert demo_wsi(["--out", str(tmp_path / "demo"), "--n-slides", "1", "--seed", "3", "--width", "1536",
                     "--height", "1024"]) == 0
    slide = tmp_path / "demo" / "slides" / "demo_000.tif"
    calls = []

    def fake_wsinfer(python, slide_, model_path, config, work, batch_size, workers):
        calls.append((python, slide_, config["patch_size_pixels"], config["spacing_um_px"], batch_size, workers))
        assert torch.jit.load(str(model_path))(torch.zeros(1, 3, 64, 64)).shape == (1, 2)  # the exported model runs
        return {"tiles": 10, "wall_s": 2.0, "stages_s": 1.0, "inference_s": 0.5, "inference_tiles_per_s": 20.0,
                "stages_tiles_per_s": 10.0}

    monkeypatch.setattr(peer, "ensure_venv", lambda path: path / "bin" / "python")
    monkeypatch.setattr(peer, "run_wsinfer", fake_wsinfer)
    out = tmp_path / "r.json"
    code = peer.main(["--slide", str(slide), "--model", "convnext_atto", "--tile-size", "64", "--target-mpp", "1.0",
                      "--batch-size", "8", "--rounds", "1", "--min-seconds", "0.2", "--accelerator", "cpu",
                      "--num-workers", "0", "--peer-venv", str(tmp_path / "venv"), "--json", str(out)])
    assert code == 0
    venv_python = tmp_path / "venv" / "bin" / "python"
    assert calls == [(venv_python, slide, 64, 1.0, 8, 0)] * 2  # loader (near-empty model), then the model
    result = json.loads(out.read_text())
    assert result["loader"]["tiles_per_s"] > 0 and set(result["wsinfer"]) == {"loader", "model"}
    printed = capsys.readouterr().out
    assert "bottleneck" in printed and "wsinfer 0.6.1 on the same slide" in printed
