"""`--devices 2 --strategy ddp` on CPU (gloo): each slide is run by exactly one of the two processes."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.integration
@pytest.mark.slow
def test_two_processes_split_the_slides_without_duplicates(tiny_wsi_run, held_out_slides, inferred, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for suffix in (".h5", ".geojson", "_heatmap.png"):  # demo_001 (process 1's only slide) is already done
        shutil.copy(inferred[1] / f"demo_001{suffix}", out)
    # a subprocess: Lightning's DDP launcher re-runs the command line for the second process
    cmd = [sys.executable, "-m", "medconv.cli", "infer", str(tiny_wsi_run), str(held_out_slides / "slides"), "--out", str(out),
           "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--num-workers", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["slide"]) == ["demo_000", "demo_001", "demo_002"]  # each once: none lost, none twice
    assert summary.set_index("slide")["status"].to_dict() == {"demo_000": "ok", "demo_001": "skipped", "demo_002": "ok"}
    # slides 0 and 2 on process 0, slide 1 on process 1 (which, with nothing to run, still took part)
    assert summary.set_index("slide")["process"].to_dict() == {"demo_000": 0, "demo_001": 1, "demo_002": 0}
    assert sorted(p.name for p in out.glob("*.h5")) == ["demo_000.h5", "demo_001.h5", "demo_002.h5"]
    assert not list(out.glob(".*tmp*"))
