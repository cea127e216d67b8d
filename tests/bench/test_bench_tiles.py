"""`medconv bench tiles` runs end to end on a tiny generated slide and writes every figure it promises."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medconv.bench import tiles
from medconv.demo.pyramid import generate_slide, he_texture
from medconv.errors import InputFileError

READERS = ("openslide", "medconv", "decode_limit")


def test_bench_generates_measures_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide, out = tmp_path / "he.tiff", tmp_path / "out" / "tiles.json"
    argv = ["--generate", str(slide), "--size", "600", "--json", str(out)]
    argv += ["--min-seconds", "0.01", "--workers", "2"]
    assert tiles.main(argv) == 0
    result = json.loads(out.read_text())
    for sfx in ("", "_2w"):  # one process, then two workers: every rate and both ratios, finite
        rates = {kind: result[f"{kind}_tiles_per_s{sfx}"] for kind in READERS}
        assert all(math.isfinite(r) for r in rates.values()), rates
        assert result[f"medconv_vs_openslide{sfx}"] == pytest.approx(rates["medconv"] / rates["openslide"], rel=0.01)
        assert result[f"medconv_vs_decode_limit{sfx}"] == pytest.approx(rates["medconv"] / rates["decode_limit"], rel=0.01)
    assert result["workers"] == 2
    assert result["reads_per_pass"] == 4  # 600 px -> a 2 x 2 grid of whole 256 reads
    assert result["level_dimensions"] == [600, 600] and result["read_size"] == 256
    assert result["medconv_backend"] == "TiffSlideReader" and result["codec"] == "jpeg/ycbcr"
    assert result["max_abs_diff_vs_openslide"] == 0  # same pixels as OpenSlide, not merely close
    assert [p.name for p in out.parent.iterdir()] == ["tiles.json"]  # no temp file left beside it
    printed = capsys.readouterr().out
    assert "medconv / OpenSlide" in printed and "medconv / limit" in printed


def test_generated_slide_is_a_pyramid_that_openslide_reads(tmp_path: Path) -> None:
    import openslide

    path = generate_slide(tmp_path / "he.tiff", size=1100, tile=256, quality=80, mpp=0.5)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.dimensions == (1100, 1100)
        assert slide.level_count >= 2 and slide.level_dimensions[1] == (550, 550)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5, rel=1e-3)
        region = np.asarray(slide.read_region((300, 300), 0, (256, 256)))[..., :3]
    assert region.std() > 20  # tissue texture, not a flat fill
    assert [p.name for p in tmp_path.iterdir()] == ["he.tiff"]


def test_generated_tissue_is_not_flat() -> None:
    """Flat colour would make JPEG tiles tiny and every reader look fast."""
    import imagecodecs

    texture = he_texture(512)
    assert texture.std() > 20
    tiles_ = [texture[y : y + 256, x : x + 256] for y in (0, 256) for x in (0, 256)]
    sizes = [len(imagecodecs.jpeg8_encode(t, level=80)) for t in tiles_]
    assert min(sizes) > 6000  # a real H&E tile at q80 is 10-15 KB


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
