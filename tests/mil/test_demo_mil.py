"""Without a manifest the MIL datamodule makes its demo bags: slides -> tiles -> `medconv embed` (which skips finished
slides on the next run, tests/embedding)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def test_demo_bags_made_and_read(tmp_path):
    from medconv.mil import MILDataModule
    from medconv.mil.demo import MILDemo

    demo = MILDemo(dir=str(tmp_path / "demo"), slides=4, slide_size=(1024, 768), encoder="resnet10t", tile_size=64, target_mpp=2.0)
    dm = MILDataModule(demo=demo, val_fraction=0.25, num_workers=0)
    assert dm.classes == ["normal", "tumor"]
    dm.setup("fit")
    assert dm.feature_dim == 512 and dm.encoder_info["name"] == "resnet10t"
    assert dm.feature_tiling["tile_size"] == 64 and float(dm.feature_tiling["target_mpp"]) == 2.0
    bag = dm.datasets["train"][0]
    assert bag["features"].shape[1] == 512 and len(bag["coords"]) == len(bag["features"])
    assert len(sorted((tmp_path / "demo_hard").glob("features_*/*.h5"))) == 4  # <demo dir>_<difficulty>, as for tiles
