"""`medconv bench infer` reports loader, model and end-to-end tiles/s and a slides/hour extrapolation."""

from __future__ import annotations

import json

import pytest

from medconv.bench.infer import main, slides_per_hour


def test_slides_per_hour_extrapolation():
    # 100k x 80k px at 0.5 um/px, 256 px tiles at 0.5 um/px: 390.6 x 312.5 tiles; half of it tissue
    tiles, per_hour = slides_per_hour(100.0, 0.5, 256, 0.5)
    assert tiles == pytest.approx(100_000 / 256 * 80_000 / 256 * 0.5)
    assert per_hour == pytest.approx(3600 * 100 / tiles)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_infer_on_a_demo_slide(tiny_wsi_run, held_out_slides, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["--slide", str(held_out_slides / "slides" / "demo_001.tif"), "--ckpt", str(tiny_wsi_run),
                 "--num-workers", "0", "--min-seconds", "0.2", "--batch-size", "32", "--json", str(out),
                 "--rounds", "2", "--slides", "2"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_tiles"] > 10 and 0 < result["tissue_fraction"] < 1
    for part in ("loader", "model", "end_to_end"):
        assert result[part]["tiles_per_s"] > 0
    assert result["slides_per_hour"] > 0
    assert len(result["rounds"]) == 2 and result["end_to_end"]["slides"] == 2 and result["end_to_end"]["failed"] == 0
    ratio, (low, high) = result["slide_over_model"], result["slide_over_model_range"]
    assert low <= ratio <= high
    assert result["loader"]["tiles"] == 2 * result["n_tiles"]  # the loader read the slide as often as infer did
    assert "bottleneck" in capsys.readouterr().out


def test_random_model_run_directory_loads_like_a_trained_run(tmp_path):
    from medconv.bench.infer import random_run
    from medconv.runs import load_run

    loaded = load_run(random_run("resnet10t", 32, 1.0, tmp_path / "run"))
    assert (loaded.modality, loaded.tile_size, loaded.target_mpp, loaded.image_size) == ("wsi", 32, 1.0, (32, 32))
    assert loaded.classes == ["normal", "tumor"]
