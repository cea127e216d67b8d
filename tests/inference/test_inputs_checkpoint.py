"""Slide sharding over processes, INPUT discovery and checkpoint errors (no model runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medconv.errors import CheckpointError, ManifestError
from medconv.slides.data import shard
from medconv.slides.jobs import SlideJob, slide_jobs


@pytest.mark.parametrize("n, world", [(5, 2), (3, 4), (7, 3), (1, 1)])
def test_every_slide_goes_to_exactly_one_process(n, world):
    jobs = [SlideJob(f"s{i}", Path(f"s{i}.tif")) for i in range(n)]
    parts = [shard(jobs, rank, world) for rank in range(world)]
    names = [j.name for part in parts for j in part]
    assert sorted(names) == sorted(j.name for j in jobs) and len(set(names)) == n


def test_manifest_and_folder_inputs(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.svs").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a slide")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_path,slide_id,mpp\nsub/b.svs,case_b,0.25\n")
    jobs, skipped = slide_jobs([str(tmp_path / "a.tif"), str(manifest)])
    assert [(j.name, j.path.name, j.mpp) for j in jobs] == [("a", "a.tif", None), ("case_b", "b.svs", 0.25)]
    jobs, skipped = slide_jobs([str(tmp_path)], slide_mpp=0.5)
    assert [j.name for j in jobs] == ["a", "b"] and all(j.mpp == 0.5 for j in jobs)
    assert sorted(p.name for p, _ in skipped) == ["m.csv", "notes.txt"]
    manifest.write_text("slide_path\nmissing.svs\n")
    with pytest.raises(ManifestError, match="missing.svs not found"):
        slide_jobs([str(manifest)])


def test_checkpoint_errors_say_what_to_pass(tmp_path):
    from medconv.runs import find_checkpoint, load_run

    with pytest.raises(CheckpointError, match="not found"):
        find_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="not a run directory"):
        find_checkpoint(tmp_path)
    lone = tmp_path / "model.ckpt"
    lone.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_run(lone)
    import torch

    torch.save({"state_dict": {}}, lone)  # no run record, and no run folder with a config.yaml to rebuild it from
    with pytest.raises(CheckpointError, match="no run record.*config.yaml"):
        load_run(lone)
