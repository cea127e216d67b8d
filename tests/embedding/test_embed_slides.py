"""`medconv embed` end to end on demo slides: complete feature files whose features are the backbone's on the
coords store's tiles, CLAM's .pt beside them, resume, a bad slide reported while the others finish, DDP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from medconv.embedding.cli import main
from medconv.embedding.encoders import encoder_from_info, load_encoder
from medconv.embedding.run import SUMMARY_COLUMNS
from medconv.tiling.coords_store import read_coords
from medconv.tiling.feature_store import read_features

from .conftest import RUN_MEAN, RUN_STD

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
SLIDES = ["demo_000", "demo_001", "demo_002"]
TIMM = ["test_resnet", "--tile-size", "64", "--target-mpp", "1.0", "--num-workers", "0"]


@pytest.fixture(scope="module")
def embedded(wsi_run, emb_slides, tmp_path_factory):
    """(exit code, out) of `medconv embed <medconv run> <slides> --dtype float32 --clam-pt` in fp32 (the default
    on a CPU with native bf16 is bf16 autocast; this compares the pipeline with a direct forward exactly)."""
    out = tmp_path_factory.mktemp("embed_out")
    code = main([str(wsi_run), str(emb_slides), "--out", str(out), "--num-workers", "0", "--batch-size", "16",
                 "--dtype", "float32", "--clam-pt", "--precision", "32-true"])
    return code, out


def _direct(encoder, slide, coords_store, image_size, mean, std) -> np.ndarray:
    """The backbone's features on the coords store's tiles, read and normalised here, not by the pipeline."""
    from medconv.slides.tile_module import InferenceTiles
    from medconv.wsi.tile_dataset import load_slide_tiles

    tiles = InferenceTiles([load_slide_tiles(slide, coords_store, 0, slide_id="s")], None, image_size)
    images = torch.stack([tiles[i]["image"] for i in range(len(tiles))]).float() / 255
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return encoder.module(x).numpy()


def test_every_slide_gets_a_complete_feature_file(embedded, wsi_run, emb_slides):
    code, out = embedded
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and summary["slide"].tolist() == SLIDES
    assert (summary["status"] == "ok").all() and (summary["n_tiles"] > 10).all() and (summary["feature_dim"] == 96).all()
    assert (summary["tiles_per_s"] > 0).all()
    encoder = load_encoder(str(wsi_run))
    for name in SLIDES:
        store = out / "coords" / f"{name}.h5"  # tiled on the fly at the run's 64 px, 1 um/px
        store_coords, store_attrs = read_coords(store)
        with h5py.File(out / f"{name}.h5", "r") as f:
            assert f["features"].dtype == np.float32 and f["features"].shape == (len(store_coords), 96)
            assert f["coords"].dtype == np.int64 and f.attrs["complete"] and f.attrs["format"] == "medconv-features/1"
            assert f.attrs["feature_dim"] == 96 and f.attrs["tile_size"] == 64 and f.attrs["target_mpp"] == 1.0
            assert list(f.attrs["image_size"]) == [48, 48] and f.attrs["dtype"] == "float32"
        coords, attrs = read_coords(out / f"{name}.h5")  # the coords store's attributes, CLAM/TRIDENT names included
        assert np.array_equal(coords, store_coords) and attrs == store_attrs
        bag = read_features(out / f"{name}.h5")
        assert bag.encoder["kind"] == "checkpoint" and bag.encoder["mean"] == RUN_MEAN
        assert np.array_equal(torch.load(out / "pt_files" / f"{name}.pt", weights_only=True).numpy(), bag.features)
    direct = _direct(encoder, emb_slides / "demo_001.tif", out / "coords" / "demo_001.h5", (48, 48), RUN_MEAN, RUN_STD)
    bag = read_features(out / "demo_001.h5")
    assert np.allclose(bag.features, direct, atol=1e-4)
    rebuilt = encoder_from_info(bag.encoder)  # what a MIL model keeps to embed new slides the same way
    again = _direct(rebuilt, emb_slides / "demo_001.tif", out / "coords" / "demo_001.h5", (48, 48), RUN_MEAN, RUN_STD)
    assert np.allclose(again, direct, atol=1e-5)


def test_rerun_skips_done_slides_and_redoes_them_for_another_dtype(embedded, wsi_run, emb_slides, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(embedded[1], out)
    before = (out / "demo_002.h5").stat().st_mtime_ns
    args = [str(wsi_run), str(emb_slides), "--out", str(out), "--num-workers", "0", "--dtype", "float32"]
    assert main(args) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["status"] == "skipped").all() and (summary["n_tiles"] > 10).all()
    assert (out / "demo_002.h5").stat().st_mtime_ns == before
    (out / ".demo_000.999.tmp.h5").write_bytes(b"partial")  # left by an interrupted run
    assert main(args[:-2]) == 0  # float16 (the default) is another output: redone
    assert (pd.read_csv(out / "summary.csv")["status"] == "ok").all()
    with h5py.File(out / "demo_000.h5", "r") as f:
        assert f["features"].dtype == np.float16
    assert not list(out.glob(".*tmp*"))


def test_bad_slides_are_reported_and_the_others_finish(emb_slides, tmp_path, capsys):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(emb_slides / "demo_001.tif", slides)
    (slides / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    out = tmp_path / "out"
    assert main([*TIMM[:1], str(slides), "--out", str(out), *TIMM[1:]]) == 1
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("slide")
    assert summary.loc["demo_001", "status"] == "ok"
    assert summary.loc["broken", "status"] == "failed" and "broken.tif" in summary.loc["broken", "error"]
    assert not (out / "broken.h5").exists()
    err = capsys.readouterr().err
    assert "random weights" in err and "demo_001:" in err and "tiles/s" in err
    assert read_features(out / "demo_001.h5").attrs["dtype"] == "float16"


def test_usage_errors_exit_2(emb_slides, tmp_path):
    assert main(["no_such_net_v9", str(emb_slides), "--out", str(tmp_path)]) == 2
    assert main([*TIMM[:1], str(emb_slides), "--out", str(tmp_path), "--image-size", "big"]) == 2


@pytest.mark.slow
def test_two_processes_embed_each_slide_once(emb_slides, tmp_path):
    out = tmp_path / "out"
    # a subprocess: Lightning's DDP launcher re-runs the command line for the second process
    cmd = [sys.executable, "-m", "medconv.cli", "embed", *TIMM[:1], str(emb_slides), "--out", str(out), *TIMM[1:],
           "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["slide"]) == SLIDES and (summary["status"] == "ok").all()  # each once: none lost, none twice
    assert summary.set_index("slide")["process"].to_dict() == {"demo_000": 0, "demo_001": 1, "demo_002": 0}
    assert sorted(p.name for p in out.glob("*.h5")) == [f"{s}.h5" for s in SLIDES] and not list(out.glob(".*tmp*"))
    # process 1 built the same (seeded) random encoder as a single process does
    with pytest.warns(UserWarning):
        encoder = load_encoder("test_resnet")
    bag = read_features(out / "demo_001.h5")
    direct = _direct(encoder, emb_slides / "demo_001.tif", out / "coords" / "demo_001.h5", (64, 64), encoder.mean, encoder.std)
    assert bag.encoder["random_seed"] == 0
    assert np.allclose(bag.features, direct, atol=2e-2, rtol=1e-2)  # float16 storage
