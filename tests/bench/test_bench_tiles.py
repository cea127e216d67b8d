"""`medconv bench tiles` runs end to end on a tiny generated slide and writes every figure it promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medconv.bench import tiles
from medconv.errors import InputFileError


def test_bench_generates_measures_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide, out = tmp_path / "he.tiff", tmp_path / "out" / "tiles.json"
    argv = ["--generate", str(slide), "--size", "600", "--json", str(out)]
    argv += ["--min-seconds", "0.01", "--workers", "2"]
    assert tiles.main(argv) == 0
    result = json.loads(out.read_text())
    for key in ("openslide_tiles_per_s", "medconv_tiles_per_s", "decode_limit_tiles_per_s"):
        assert result[key] > 0 and result[f"{key}_2w"] > 0
    ratio = result["medconv_tiles_per_s"] / result["openslide_tiles_per_s"]
    assert result["medconv_vs_openslide"] == pytest.approx(ratio, rel=0.01)
    assert result["reads_per_pass"] == 4  # 600 px -> a 2 x 2 grid of whole 256 reads
    assert result["medconv_backend"] == "TiffSlideReader" and result["codec"] == "jpeg/ycbcr"
    assert result["max_abs_diff_vs_openslide"] <= 2
    assert "medconv / OpenSlide" in capsys.readouterr().out


def test_generated_tissue_is_not_flat() -> None:
    """Flat colour would make JPEG tiles tiny and every reader look fast."""
    import imagecodecs

    texture = tiles.he_texture(512)
    assert texture.std() > 20
    tiles_ = [texture[y : y + 256, x : x + 256] for y in (0, 256) for x in (0, 256)]
    sizes = [len(imagecodecs.jpeg8_encode(t, level=80)) for t in tiles_]
    assert min(sizes) > 6000


def test_aligned_positions_cap_takes_a_middle_run() -> None:
    assert tiles.aligned_positions((600, 300), 256, 100) == [(0, 0), (256, 0)]
    run = tiles.aligned_positions((2560, 2560), 256, 10)
    assert len(run) == 10  # 100 positions, start at (100 - 10) // 2 = 45: row 4, column 5
    assert run[0] == (5 * 256, 4 * 256) and run[-1] == (4 * 256, 5 * 256)


def test_unsupported_slide_is_a_clear_error(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    with pytest.raises(InputFileError, match="x.png"):
        tiles.main(["--slide", str(png), "--workers", "1"])
    with pytest.raises(InputFileError, match="missing.tiff"):
        tiles.main(["--slide", str(tmp_path / "missing.tiff")])
