"""The tile dataset on a generated pyramid TIFF + coords store: right pixels, right labels, worker-safe handles."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medconv import keys
from medconv.io.png import write_mask_png
from medconv.io.slide import open_slide
from medconv.io.tiff_writer import write_pyramid_tiff
from medconv.tiling.coords_store import write_coords
from medconv.tiling.geometry import grid_positions, plan_tiles
from medconv.wsi.tile_dataset import UNLABELLED, TileDataset, load_slide_tiles
from medconv.wsi.transforms import to_tensor

W, H, MPP = 1024, 768, 0.5


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("slide")
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (H // 16, W // 16, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)  # smooth, so JPEG keeps it recognisable
    path = write_pyramid_tiff(root / "s1.tif", rgb, mpp=MPP, tile=128, min_size=256)
    return root, path


def _store(root, slide_path, target_mpp, tile_size, name):
    reader = open_slide(slide_path)
    plan = plan_tiles(reader.level_downsamples, reader.mpp, target_mpp, tile_size)
    reader.close()
    coords = grid_positions(W, H, plan.patch_size_level0, plan.stride_level0)
    attrs = {"tile_size": tile_size, "target_mpp": target_mpp, "slide_mpp": MPP, "level": plan.level,
             "level_downsample": plan.level_downsample, "read_size": plan.read_size,
             "patch_size_level0": plan.patch_size_level0, "source_path": str(slide_path), "slide_width": W}
    return write_coords(root / f"{name}.h5", coords, attrs), plan


@pytest.mark.parametrize("target_mpp", [1.0, 0.75])  # level 1 read as is; level 0 read larger and shrunk
def test_tiles_equal_direct_reads(slide, target_mpp):
    root, path = slide
    store, plan = _store(root, path, target_mpp, 32, f"s1_{target_mpp}")
    st = load_slide_tiles(path, store, label_index=1, patient_id="p1")
    assert (st.labels == 1).all() and st.slide_id == "s1"
    ds = TileDataset([st])
    assert len(ds) == len(st.coords) > 10
    reader = open_slide(path)
    for i in (0, 7, len(ds) - 1):
        x, y = st.coords[i]
        tile = reader.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size))
        if plan.read_size != 32:
            tile = cv2.resize(tile, (32, 32), interpolation=cv2.INTER_AREA)
        sample = ds[i]
        assert sample[keys.IMAGE].shape == (3, 32, 32) and sample[keys.IMAGE].dtype == torch.float32
        torch.testing.assert_close(sample[keys.IMAGE], to_tensor(tile))
        assert (sample[keys.X], sample[keys.Y], sample[keys.SLIDE_ID], sample[keys.PATIENT_ID]) == (int(x), int(y), "s1", "p1")
    reader.close()


def test_workers_open_their_own_handles(slide):
    root, path = slide
    store, _ = _store(root, path, 1.0, 32, "s1_workers")
    a = load_slide_tiles(path, store, label_index=0, slide_id="a")
    b = load_slide_tiles(path, store, label_index=1, slide_id="b")
    ds = TileDataset([a, b])
    ds[0]  # the parent holds a handle before the workers fork: they must not share it
    assert len(ds._readers) == 1
    serial = next(iter(DataLoader(ds, batch_size=len(ds), num_workers=0)))
    parallel = list(DataLoader(ds, batch_size=16, num_workers=2))
    torch.testing.assert_close(torch.cat([b[keys.IMAGE] for b in parallel]), serial[keys.IMAGE])
    assert torch.cat([b[keys.LABEL] for b in parallel]).tolist() == [0] * len(a.coords) + [1] * len(b.coords)
    assert [s for b in parallel for s in b[keys.SLIDE_ID]] == ["a"] * len(a.coords) + ["b"] * len(b.coords)


def test_labels_from_mask_and_polygons(slide, tmp_path):
    root, path = slide
    store, plan = _store(root, path, 1.0, 32, "s1_labels")  # tiles of 64 level-0 px
    mask = np.zeros((H // 16, W // 16), bool)
    mask[0:8, 0:8] = True  # level-0 [0, 128): the four top-left tiles are all tumour
    mask[8:10, 0:4] = True  # level-0 y [128, 160), x [0, 64): half of the tile at (0, 128)
    mask_path = write_mask_png(tmp_path / "m.png", mask, 16)
    st = load_slide_tiles(path, store, label_index=1, mask_path=mask_path)  # downsample read from the PNG
    label = {tuple(c): int(v) for c, v in zip(st.coords.tolist(), st.labels, strict=True)}
    assert label[(0, 0)] == label[(64, 64)] == 1
    assert label[(0, 128)] == 1  # half tumour reaches the default threshold of 0.5
    assert label[(128, 0)] == label[(512, 512)] == 0
    strict = load_slide_tiles(path, store, label_index=1, mask_path=mask_path, mask_downsample=16, tumour_threshold=0.75)
    label = {tuple(c): int(v) for c, v in zip(strict.coords.tolist(), strict.labels, strict=True)}
    assert label[(0, 128)] == UNLABELLED and label[(0, 0)] == 1

    geojson = tmp_path / "a.geojson"
    geojson.write_text('[{"type": "Feature", "properties": {"classification": {"name": "Tumor"}},'
                       ' "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]]]}}]')
    poly = load_slide_tiles(path, store, label_index=0, annotation_path=geojson)
    assert poly.labels.sum() == 4 and set(map(tuple, poly.coords[poly.labels == 1].tolist())) == {(0, 0), (64, 0), (0, 64), (64, 64)}


def test_augmentation_replays_per_draw(slide):
    from medconv.wsi.transforms import HEAugment, he_train_transforms

    root, path = slide
    store, _ = _store(root, path, 1.0, 32, "s1_aug")
    ds = TileDataset([load_slide_tiles(path, store, label_index=0)], transform=he_train_transforms(HEAugment()))
    n = len(ds)
    first, again = ds[3 + n * 5], ds[3 + n * 5]
    torch.testing.assert_close(first[keys.IMAGE], again[keys.IMAGE])
    others = [ds[3 + n * d][keys.IMAGE] for d in range(6, 12)]
    assert any(not torch.equal(first[keys.IMAGE], o) for o in others)


def test_export_tiles_writes_each_tile_once(slide, tmp_path):
    from medconv.wsi.export_tiles import main

    root, path = slide
    coords = tmp_path / "coords"
    coords.mkdir()
    store, plan = _store(coords, path, 1.0, 32, "s1")
    out = tmp_path / "tiles"
    assert main(["--coords", str(coords), "--out", str(out)]) == 0  # slide found through the store's source_path
    st = load_slide_tiles(path, store, label_index=0)
    files = sorted((out / "s1").glob("*.png"))
    assert len(files) == len(st.coords)
    x, y = st.coords[5]
    written = cv2.cvtColor(cv2.imread(str(out / "s1" / f"s1_x{x}_y{y}.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, TileDataset([st]).read_tile(0, 5))  # PNG: lossless
    index = (out / "tiles.csv").read_text().splitlines()
    assert index[0] == "path,slide_id,x,y,label" and len(index) == len(st.coords) + 1
    stamp = files[0].stat().st_mtime_ns
    assert main(["--coords", str(coords), "--out", str(out)]) == 0
    assert files[0].stat().st_mtime_ns == stamp  # rerun skips finished tiles
    assert main(["--coords", str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_datamodule_from_manifest_and_coords_dir(slide, tmp_path):
    import shutil

    import pandas as pd

    from medconv.errors import ManifestError
    from medconv.wsi.datamodule import WSITileDataModule

    root, path = slide
    coords = tmp_path / "coords"
    coords.mkdir()
    rows = []
    for i in range(4):
        shutil.copy(path, tmp_path / f"s{i}.tif")
        rows.append({"slide_path": f"s{i}.tif", "label": "tumor" if i % 2 else "normal", "patient_id": f"p{i}",
                     "annotation_path": "ann.geojson" if i % 2 else ""})
    (tmp_path / "ann.geojson").write_text(
        '{"type": "Feature", "properties": {"classification": "Tumor"},'
        ' "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]}}')
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    for i in range(3):  # s3 not tiled yet
        _store(coords, tmp_path / f"s{i}.tif", 1.0, 32, f"s{i}")
    dm = WSITileDataModule(manifest=str(tmp_path / "m.csv"), coords_dir=str(coords), image_size=(32, 32), batch_size=8,
                           num_workers=0, val_fraction=0.5, balanced_sampling=True)
    with pytest.raises(ManifestError, match=r"row 5: coords store .*s3\.h5 not found; run `medconv tile`"):
        dm.setup("fit")
    _store(coords, tmp_path / "s3.tif", 1.0, 32, "s3")
    dm = WSITileDataModule(manifest=str(tmp_path / "m.csv"), coords_dir=str(coords), image_size=(32, 32), batch_size=8,
                           num_workers=0, val_fraction=0.5, balanced_sampling=True)
    dm.setup("fit")
    assert dm.classes == ["normal", "tumor"] and dm.eval_groups == {"slide": ["slide_id"]}
    train = dm.datasets["train"]
    per_slide = {s.slide_id: s.labels for s in train.slides}
    tumour_slide = next(k for k in per_slide if k in ("s1", "s3"))
    assert per_slide[tumour_slide].sum() == 16  # the 256 px annotated square = 4 x 4 tiles of 64 level-0 px
    assert len(per_slide[tumour_slide]) == len(st_coords := train.slides[0].coords) and len(st_coords) > 16
    batch = next(iter(dm.train_dataloader()))
    assert batch[keys.IMAGE].shape == (8, 3, 32, 32)
    drawn = torch.cat([b[keys.LABEL] for b, _ in zip(dm.train_dataloader(), range(20), strict=False)])
    assert 0.25 < drawn.float().mean() < 0.75  # balanced by tile labels, though only 16 of ~190 tiles are tumour
