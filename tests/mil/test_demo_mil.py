"""Without a manifest the MIL datamodule makes its demo bags: slides -> tiles -> `medconv embed` (which skips finished
slides on the next run, tests/embedding)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def test_demo_bags_made_and_read(tmp_path):
    from medconv.demo import MILDemo
    from medconv.mil import MILDataModule

    demo = MILDemo(root=str(tmp_path / "demo"), n_slides=4, slide_size=(1024, 768), encoder="resnet10t", tile_size=64, target_mpp=2.0)
    dm = MILDataModule(demo=demo, val_fraction=0.25, num_workers=0)
    assert dm.classes == ["normal", "tumor"]
    dm.setup("fit")
    assert dm.feature_dim == 512 and dm.encoder_info["name"] == "resnet10t"
    assert dm.feature_tiling["tile_size"] == 64 and float(dm.feature_tiling["target_mpp"]) == 2.0
    bag = dm.datasets["train"][0]
    assert bag["features"].shape[1] == 512 and len(bag["coords"]) == len(bag["features"])
    assert len(sorted((tmp_path / "demo_hard").glob("features_*/*.h5"))) == 4  # <demo dir>_<difficulty>, as for tiles


def test_the_old_demo_mapping_warns_and_names_the_same_set(tmp_path):
    """Configs saved before `medconv.demo.MILDemo` wrote `demo:` as a plain mapping (dir, slides, ...; no class_path)."""
    from medconv.demo import MILDemo
    from medconv.errors import ConfigError
    from medconv.mil import MILDataModule

    old = {"dir": str(tmp_path / "demo"), "slides": 4, "seed": 0, "slide_size": [1024, 768], "difficulty": "hard",
           "encoder": "resnet10t", "tile_size": 64, "target_mpp": 2.0}
    with pytest.warns(FutureWarning, match=r"dir -> demo.init_args.root, slides -> demo.init_args.n_slides"):
        dm = MILDataModule(demo=old)
    assert dm.demo == MILDemo(root=str(tmp_path / "demo"), n_slides=4, slide_size=(1024, 768), encoder="resnet10t",
                              tile_size=64, target_mpp=2.0)
    assert not list(tmp_path.iterdir())  # nothing is made before the data is asked for
    with pytest.raises(ConfigError, match="unknown keys"):
        MILDataModule(demo={"dirr": "x"})
