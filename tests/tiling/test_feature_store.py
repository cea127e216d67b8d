"""`read_features` takes medconv files, CLAM's h5 and .pt files and TRIDENT's h5, and names the file it cannot read."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from medconv.errors import InputFileError
from medconv.tiling.feature_store import read_features, write_features

FEATURES = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
COORDS = np.array([[0, 0], [256, 0], [0, 256], [256, 256]], dtype=np.int64)


def test_clam_h5_and_pt_files_read_back(tmp_path):
    (tmp_path / "h5_files").mkdir()
    with h5py.File(tmp_path / "h5_files" / "s1.h5", "w") as f:  # CLAM's extract_features_fp: two datasets, no attrs
        f.create_dataset("features", data=FEATURES)
        f.create_dataset("coords", data=COORDS)
    bag = read_features(tmp_path / "h5_files" / "s1.h5")
    assert bag.features.dtype == np.float32 and np.array_equal(bag.features, FEATURES)
    assert bag.coords.dtype == np.int64 and np.array_equal(bag.coords, COORDS)
    assert bag.attrs == {} and bag.encoder is None
    torch.save(torch.from_numpy(FEATURES), tmp_path / "s1.pt")  # CLAM's pt_files/<slide>.pt
    bag = read_features(tmp_path / "s1.pt")
    assert np.array_equal(bag.features, FEATURES) and bag.coords is None


def test_trident_and_medconv_files_read_back(tmp_path):
    with h5py.File(tmp_path / "trident.h5", "w") as f:  # features_<encoder>/<slide>.h5: attributes per dataset
        f.create_dataset("features", data=FEATURES.astype(np.float16)[None])  # some tools keep a batch axis
        coords = f.create_dataset("coords", data=COORDS)
        coords.attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40})
    bag = read_features(tmp_path / "trident.h5")
    assert bag.features.shape == (4, 3) and bag.attrs["patch_size_level0"] == 512
    path = write_features(tmp_path / "m.h5", FEATURES, COORDS, {"patch_size": 256, "downsample": [2.0, 2.0]},
                          {"encoder": '{"kind": "timm"}', "feature_dim": 3}, dtype="float32")
    bag = read_features(path)
    assert np.array_equal(bag.features, FEATURES) and bag.encoder == {"kind": "timm"}
    assert bag.attrs["downsample"] == [2.0, 2.0] and bag.attrs["format"] == "medconv-features/1"


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(InputFileError, match="missing.h5: feature file not found"):
        read_features(tmp_path / "missing.h5")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(InputFileError, match="bad.h5: unreadable HDF5"):
        read_features(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "coords.h5", "w") as f:
        f.create_dataset("coords", data=COORDS)
    with pytest.raises(InputFileError, match="coords.h5: no `features` dataset"):
        read_features(tmp_path / "coords.h5")
    (tmp_path / "bad.pt").write_bytes(b"not a tensor")
    with pytest.raises(InputFileError, match="bad.pt: unreadable"):
        read_features(tmp_path / "bad.pt")
    with h5py.File(tmp_path / "part.h5", "w") as f:
        f.create_dataset("features", data=FEATURES)
        f.attrs["format"] = "medconv-features/1"
    with pytest.raises(InputFileError, match="in part"):
        read_features(tmp_path / "part.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((0, 3), np.float32))
    with pytest.raises(InputFileError, match="empty.h5: no tiles"):
        read_features(tmp_path / "empty.h5")


def test_feature_files_are_checked_by_the_fingerprint_embed_records():
    """MIL training and `medconv infer` compare `encoder_fingerprint` of the files' encoder records; `medconv embed`
    records the encoder's own fingerprint: the two must be one identity, or good bags would be refused."""
    import warnings

    from medconv.embedding.encoders import load_encoder
    from medconv.tiling.feature_store import encoder_fingerprint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights: a baseline
        encoder = load_encoder("test_resnet")
    assert encoder.fingerprint() == encoder_fingerprint(encoder.info)
    assert encoder_fingerprint({**encoder.info, "weights": "/elsewhere/w.pth"}) == encoder.fingerprint()  # where, not what
    assert encoder_fingerprint({**encoder.info, "mean": [0.0, 0.0, 0.0]}) != encoder.fingerprint()
