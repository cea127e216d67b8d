"""The fast TIFF reader gives OpenSlide's pixels, geometry and mpp, and hands everything else to OpenSlide."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from medconv.errors import InputFileError
from medconv.io.slide import OpenSlideReader, open_slide
from medconv.io.tiff_reader import TiffSlideReader, can_read
from medconv.io.tiff_writer import write_pyramid_tiff

W, H = 1300, 1100  # partial edge tiles on both axes; divisible by 4 so level downsamples are exactly 2 and 4


def tissue(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields plus noise: JPEG has real work to do, and misplaced tiles would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([200 + 40 * np.sin(xx / 37), 120 + 60 * np.cos(yy / 23), 180 + 50 * np.sin((xx + yy) / 51)], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiff") / "slide.tiff"
    return write_pyramid_tiff(path, tissue(H, W), mpp=0.5, tile=256, quality=80, min_size=256)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_same_pixels(fast: TiffSlideReader, ref: OpenSlideReader, regions) -> None:
    for location, level, size in regions:
        a = fast.read_region(location, level, size)
        b = ref.read_region(location, level, size)
        assert a.shape == b.shape == (size[1], size[0], 3) and a.dtype == np.uint8
        diff = int(np.abs(a.astype(np.int16) - b).max()) if a.size else 0
        assert diff <= 2, f"{location} level {level} size {size}: max abs diff {diff}"
        assert psnr(a, b) >= 50, f"{location} level {level} size {size}: PSNR {psnr(a, b):.1f} dB"


def test_generated_pyramid_matches_openslide(pyramid: Path) -> None:
    with TiffSlideReader(pyramid) as fast, OpenSlideReader(pyramid) as ref:
        assert fast.level_dimensions == ref.level_dimensions == ((W, H), (W // 2, H // 2), (W // 4, H // 4))
        assert fast.level_downsamples == ref.level_downsamples
        regions = [
            ((0, 0), 0, (256, 256)),  # one stored tile (fast path)
            ((256, 512), 0, (256, 256)),
            ((100, 130), 0, (300, 400)),  # spans four tiles, unaligned
            ((1200, 1000), 0, (256, 256)),  # bottom-right corner: partial edge tile, rest outside
            ((1280, 0), 0, (256, 256)),  # aligned on the partial last column
            ((-50, -70), 0, (200, 150)),  # partly above/left of the slide
            ((W + 10, 20), 0, (64, 64)),  # wholly outside
            ((-300, -300), 0, (1900, 1700)),  # covers the whole slide and more
            ((10, 10), 0, (1, 1)),
            ((512, 256), 1, (256, 256)),  # level 1 tile-aligned
            ((202, 398), 1, (300, 200)),  # level 1, even level-0 coords map to whole level pixels
            ((1100, 900), 1, (200, 200)),  # level 1 past the edge
            ((-40, 0), 1, (100, 100)),
            ((0, 0), 2, (W // 4, H // 4)),  # whole level 2 (one partial tile column/row)
            ((400, 400), 2, (256, 256)),
        ]
        assert_same_pixels(fast, ref, regions)
        rng = np.random.default_rng(1)
        random_regions = []
        for _ in range(20):
            level = int(rng.integers(0, 3))
            ds = int(fast.level_downsamples[level])
            x, y = (int(v) * ds for v in rng.integers(-100, 700, 2))
            random_regions.append(((x, y), level, tuple(int(v) for v in rng.integers(1, 400, 2))))
        assert_same_pixels(fast, ref, random_regions)


def test_non_integral_downsample_reads_the_nearest_stored_pixels(tmp_path: Path) -> None:
    """Odd level-0 sizes give downsamples like 2.0018. OpenSlide then shifts level reads by a fraction of a
    pixel (cairo resampling); medconv snaps to the nearest stored level pixel instead, exactly."""
    path = write_pyramid_tiff(tmp_path / "odd.tiff", tissue(1001, 1301), mpp=0.5, min_size=256)
    with TiffSlideReader(path) as fast, tifffile.TiffFile(path) as tif:
        ds = fast.level_downsamples[1]
        assert ds == pytest.approx((1001 / 500 + 1301 / 650) / 2) and ds != 2.0
        level1 = tif.pages[1].asarray()
        for lx, ly in [(0, 0), (100, 50), (300, 200), (600, 450)]:
            got = fast.read_region((round(lx * ds), round(ly * ds)), 1, (128, 96))
            want = np.full((96, 128, 3), 255, np.uint8)
            part = level1[ly : ly + 96, lx : lx + 128]
            want[: part.shape[0], : part.shape[1]] = part
            assert np.array_equal(got, want), (lx, ly)


def test_repeated_reads_and_cache_do_not_leak_between_calls(pyramid: Path) -> None:
    with TiffSlideReader(pyramid) as fast:
        first = fast.read_region((128, 128), 0, (256, 256)).copy()  # partial tiles: cached
        tile = fast.read_region((256, 256), 0, (256, 256))  # whole tile, cached above
        tile[:] = 0  # a caller scribbling on its result must not change the next read
        again = fast.read_region((128, 128), 0, (256, 256))
        assert np.array_equal(first, again)
        assert fast.read_region((256, 256), 0, (256, 256)).max() > 0


@pytest.mark.parametrize("cache_bytes", [600_000, 32 * 2**20])  # three tiles (constant eviction), default
def test_results_stay_valid_while_tile_buffers_are_recycled(pyramid: Path, cache_bytes: int) -> None:
    """Evicted and scratch tiles are decoded into again; nothing a caller or the cache holds may be among them."""
    regions = [((x, y), 0, (300, 300)) for x in range(0, 1000, 150) for y in (0, 130, 400)]
    with TiffSlideReader(pyramid, cache_bytes=cache_bytes) as fast:
        kept = [fast.read_region(*region) for region in regions]
        kept += [fast.read_region((256 * i, 256), 0, (256, 256)) for i in range(4)]  # whole-tile fast path
        for region in regions[::-1]:
            fast.read_region(*region)
    with OpenSlideReader(pyramid) as ref:
        expected = [ref.read_region(*region) for region in regions]
        expected += [ref.read_region((256 * i, 256), 0, (256, 256)) for i in range(4)]
    for a, b in zip(kept, expected, strict=True):
        assert int(np.abs(a.astype(np.int16) - b).max()) <= 2


def test_open_slide_auto_uses_fast_reader_and_mpp_matches(pyramid: Path) -> None:
    assert can_read(pyramid)
    with open_slide(pyramid) as reader, OpenSlideReader(pyramid) as ref:
        assert isinstance(reader, TiffSlideReader)
        assert reader.mpp == pytest.approx(0.5) and reader.mpp == pytest.approx(ref.mpp)
        assert reader.properties["openslide.mpp-x"] == ref.properties["openslide.mpp-x"]
        assert reader.dimensions == ref.dimensions and reader.level_count == ref.level_count == 3
    with open_slide(pyramid, mpp=0.25) as reader:
        assert reader.mpp == 0.25


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [((20000, 20000), "CENTIMETER", 0.5), ((50800, 50800), "INCH", 0.5), (None, None, None)],
)
def test_mpp_from_tiff_resolution_as_openslide(tmp_path: Path, resolution, unit, expected) -> None:
    path = tmp_path / "res.tiff"
    tifffile.imwrite(
        path, tissue(300, 300), tile=(256, 256), photometric="rgb", compression="jpeg",
        resolution=resolution, resolutionunit=unit,
    )
    with TiffSlideReader(path) as fast, OpenSlideReader(path) as ref:
        assert fast.mpp == ref.mpp == (pytest.approx(expected) if expected else None)
        assert fast.properties.get("openslide.mpp-x") == ref.properties.get("openslide.mpp-x")


def test_thumbnail_matches_openslide(pyramid: Path) -> None:
    with TiffSlideReader(pyramid) as fast, OpenSlideReader(pyramid) as ref:
        a, b = fast.get_thumbnail((200, 200)), ref.get_thumbnail((200, 200))
        assert a.shape == b.shape and max(a.shape[:2]) == 200
        assert int(np.abs(a.astype(np.int16) - b).max()) <= 2


def test_pickle_round_trip_reopens(pyramid: Path) -> None:
    with TiffSlideReader(pyramid, mpp=0.7) as reader:
        expected = reader.read_region((300, 200), 0, (300, 300))
        clone = pickle.loads(pickle.dumps(reader))
    with clone:
        assert clone.path == pyramid and clone.mpp == 0.7
        assert clone.level_dimensions == ((W, H), (W // 2, H // 2), (W // 4, H // 4))
        assert np.array_equal(clone.read_region((300, 200), 0, (300, 300)), expected)


def _tile_sum(reader: TiffSlideReader) -> int:
    return int(reader.read_region((300, 200), 0, (300, 300)).sum(dtype=np.int64))


def _report_tile_sum(reader: TiffSlideReader, queue) -> None:
    queue.put((_tile_sum(reader), reader._pid))


def test_worker_processes_get_their_own_handle(pyramid: Path) -> None:
    """DataLoader workers receive the reader either pickled (spawn) or inherited as is (fork)."""
    ctx = mp.get_context("fork")
    with TiffSlideReader(pyramid) as reader:
        expected = _tile_sum(reader)
        with ctx.Pool(1) as pool:
            assert pool.apply(_tile_sum, (reader,)) == expected  # pickled to the worker
        queue = ctx.Queue()
        child = ctx.Process(target=_report_tile_sum, args=(reader, queue))  # fork: inherited, not pickled
        child.start()
        value, pid = queue.get(timeout=60)
        child.join(timeout=60)
        assert value == expected and pid == child.pid  # the child reopened the file in its own process
        assert _tile_sum(reader) == expected and reader._pid != child.pid  # parent's handle untouched


def test_lossless_tiled_tiff_matches_openslide(tmp_path: Path) -> None:
    path = tmp_path / "lzw.tiff"
    rgb = tissue(600, 700, seed=3)
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="lzw", predictor=True)
    assert can_read(path)
    with TiffSlideReader(path) as fast, OpenSlideReader(path) as ref:
        assert_same_pixels(fast, ref, [((0, 0), 0, (700, 600)), ((600, 500), 0, (256, 256))])
        assert np.array_equal(fast.read_region((0, 0), 0, (700, 600)), rgb)


def write_aperio_j2k(path: Path, rgb: np.ndarray, compression: int) -> Path:
    """A minimal Aperio SVS with JPEG 2000 tiles: 33005 holds RGB components, 33003 YCbCr (converted here)."""
    import imagecodecs

    def components(t: np.ndarray) -> np.ndarray:
        if compression == 33005:
            return t
        r, g, b = (t[..., i].astype(np.float32) for i in range(3))
        ycc = [
            0.299 * r + 0.587 * g + 0.114 * b,
            128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
            128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
        ]
        return np.clip(np.stack(ycc, -1) + 0.5, 0, 255).astype(np.uint8)

    h, w, tile = rgb.shape[0], rgb.shape[1], 256

    def tiles():
        for row in range(-(-h // tile)):
            for col in range(-(-w // tile)):
                t = np.zeros((tile, tile, 3), np.uint8)
                part = rgb[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
                t[: part.shape[0], : part.shape[1]] = part
                yield imagecodecs.jpeg2k_encode(components(t), level=40, codecformat="J2K", mct=False)

    description = f"Aperio Image Library v12.0.15\r\n{w}x{h} (256x256) J2K/KDU Q=70|AppMag = 20|MPP = 0.5|Filename = t"
    with tifffile.TiffWriter(path) as tif:
        tif.write(tiles(), shape=rgb.shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                  compression=compression, description=description, metadata=None)
    return path


@pytest.mark.parametrize("compression", [33003, 33005])
def test_aperio_jpeg2000_matches_openslide(tmp_path: Path, compression: int) -> None:
    path = write_aperio_j2k(tmp_path / f"j2k{compression}.svs", tissue(600, 700, seed=5), compression)
    assert can_read(path)
    with TiffSlideReader(path) as fast, OpenSlideReader(path) as ref:
        assert fast.grid(0).codec == ("j2k/ycbcr" if compression == 33003 else "j2k/rgb")
        assert fast.mpp == ref.mpp == pytest.approx(0.5)
        assert_same_pixels(fast, ref, [((0, 0), 0, (700, 600)), ((500, 400), 0, (256, 256)), ((-10, 0), 0, (300, 100))])


def test_unsupported_files_go_to_openslide_or_fail_clearly(tmp_path: Path, pyramid: Path) -> None:
    png = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(tissue(64, 64)).save(png)
    assert not can_read(png)
    assert not can_read(tmp_path / "missing.tiff")

    stripped = tmp_path / "strips.tiff"  # not tiled: OpenSlide does not open it either
    tifffile.imwrite(stripped, tissue(64, 64), photometric="rgb")
    assert not can_read(stripped)

    zstd = tmp_path / "zstd.tiff"  # tiled, but a codec we do not promise to decode like libtiff
    tifffile.imwrite(zstd, tissue(300, 300), tile=(256, 256), photometric="rgb", compression="zstd")
    assert not can_read(zstd)

    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(pyramid.read_bytes()[: pyramid.stat().st_size // 2])
    assert not can_read(truncated)
    with pytest.raises(InputFileError, match="truncated.tiff"):
        open_slide(truncated)
    with pytest.raises(InputFileError, match="truncated"):
        TiffSlideReader(truncated)


@pytest.mark.realdata
def test_aperio_svs_matches_openslide(realdata: Path) -> None:
    svs = realdata / "cmu-1-small-region.svs"
    if not svs.exists():
        pytest.skip(f"{svs} is absent")
    assert can_read(svs)
    with TiffSlideReader(svs) as fast, OpenSlideReader(svs) as ref:
        assert fast.level_dimensions == ref.level_dimensions == ((2220, 2967),)
        assert fast.mpp == pytest.approx(ref.mpp) and fast.mpp == pytest.approx(0.499)
        assert fast.properties["openslide.vendor"] == "aperio"
        regions = [
            ((0, 0), 0, (240, 240)),  # one stored tile: JPEG/RGB with shared JPEGTables
            ((480, 720), 0, (256, 256)),  # 256 reads over 240 tiles span four tiles
            ((1000, 1500), 0, (512, 384)),
            ((2100, 2850), 0, (256, 256)),  # bottom-right edge
            ((-20, 2900), 0, (128, 128)),
        ]
        assert_same_pixels(fast, ref, regions)
        whole_a = fast.read_region((0, 0), 0, (2220, 2967))
        whole_b = ref.read_region((0, 0), 0, (2220, 2967))
        assert int(np.abs(whole_a.astype(np.int16) - whole_b).max()) <= 2
        assert psnr(whole_a, whole_b) >= 50


@pytest.mark.realdata
def test_dicom_wsi_is_left_to_openslide(realdata: Path) -> None:
    dcm = realdata / "multiframe_camelyon_challenge_image.dcm"
    if not dcm.exists():
        pytest.skip(f"{dcm} is absent")
    assert not can_read(dcm)
    with open_slide(dcm) as reader:
        assert isinstance(reader, OpenSlideReader)
