"""Feature bags from files and the slide-level datamodule: manifest validation lists every problem, splits by
patient, padded batches, subsampling replayed per draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medconv import keys
from medconv.demo import MILDemo
from medconv.errors import ManifestError
from medconv.mil import FeatureBagDataset, MILDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_manifest_problems_reported_together(bags, bag_maker):
    root = bags.parent
    table = pd.read_csv(bags)
    (root / "features" / "slide_002.h5").unlink()
    (root / "features" / "slide_003.h5").write_bytes(b"garbage")
    bag_maker.write_bag(root / "features" / "slide_004.h5", np.zeros((5, 4), np.float32))  # D=4 among D=8
    table.loc[5, "label"] = "unknown"
    table.loc[6, "patient_id"] = ""
    table.to_csv(bags, index=False)
    dm = MILDataModule(manifest=str(bags), features_dir=str(root / "features"), classes=["normal", "tumor"])
    with pytest.raises(ManifestError) as info:
        dm.setup("fit")
    message = str(info.value)
    for expected in ("slide_002.h5 not found", "row 5: ", "slide_003.h5: unreadable", "different widths", "label 'unknown'",
                     "row 8: empty patient_id"):
        assert expected in message, message
    assert "5 problem(s)" in message


def test_manifest_needs_a_bag_column(tmp_path):
    pd.DataFrame({"label": ["a"], "patient_id": ["p"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match="no features_path or slide_path"):
        MILDataModule(manifest=str(tmp_path / "m.csv")).setup("fit")
    # no manifest: the demo bags' classes, known before (and without) making any demo data
    assert MILDataModule(demo=MILDemo(root=str(tmp_path / "demo"))).classes == ["normal", "tumor"]
    assert not list(tmp_path.glob("demo*"))
    pd.DataFrame({"label": ["a"], "patient_id": ["p"], "slide_path": ["s.tif"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match="features_dir"):
        MILDataModule(manifest=str(tmp_path / "m.csv")).setup("fit")


def test_datamodule_batches_and_feature_dim(bags):
    root = bags.parent
    table = pd.read_csv(bags)
    table["features_path"] = [f"features/{p.split('/')[1].replace('.tif', '.h5')}" for p in table.pop("slide_path")]
    table.to_csv(root / "by_path.csv", index=False)  # features_path relative to the manifest; slide ids from it
    dm = MILDataModule(manifest=str(root / "by_path.csv"), batch_size=3, num_workers=0, val_fraction=0.34, max_instances=6)
    assert dm.feature_dim == 8 and dm.num_classes == 2 and dm.eval_groups == {}
    dm.setup("fit")
    assert set(dm.splits["train"]["patient_id"]).isdisjoint(dm.splits["val"]["patient_id"])
    batch = next(iter(dm.train_dataloader()))
    assert batch[keys.FEATURES].shape[0] == 3 and batch[keys.FEATURES].shape[1] <= 6 and batch[keys.FEATURES].dtype == torch.float32
    assert batch[keys.MASK].dtype == torch.bool and batch[keys.COORDS].shape[:2] == batch[keys.MASK].shape
    assert batch[keys.SLIDE_ID][0].startswith("slide_") and batch[keys.LABEL].dtype == torch.long
    val = next(iter(dm.val_dataloader()))
    sizes = val[keys.MASK].sum(1).tolist()
    assert max(sizes) == val[keys.FEATURES].shape[1] and min(sizes) >= 5  # whole bags in evaluation
    assert dm.state_dict()["fit_patient_hashes"]


def test_subsampling_is_drawn_per_epoch_and_replayable(bags):
    root = bags.parent
    paths = sorted(str(p) for p in (root / "features").glob("*.h5"))
    ds = FeatureBagDataset(paths, [0] * len(paths), [f"s{i}" for i in range(len(paths))], ["p"] * len(paths), max_instances=3, seed=1)
    n = len(ds)
    first, again, later = ds[0][keys.FEATURES], ds[0][keys.FEATURES], ds[0 + n * 7][keys.FEATURES]
    assert first.shape == (3, 8) and torch.equal(first, again) and not torch.equal(first, later)
    coords = ds[0][keys.COORDS]
    assert (coords[1:, 0] + 8 * coords[1:, 1] > coords[:-1, 0] + 8 * coords[:-1, 1]).all()  # instance order kept
