"""`SlideStream`: one process's slides as one ordered stream of batches while the slides are still being tiled.

The order must be exact with several workers (the writer relies on it), no tile twice or missing, a slide whose
tiles cannot be read must give error batches in its place (the others keep their order), and a process with
nothing to read must still give the model one batch (DDP needs every rank to run a step)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from medconv import keys
from medconv.slides import tile_module
from medconv.slides.stream import SlideBoard, SlideStream, StreamLoader
from medconv.tiling.coords_store import read_coords
from medconv.tiling.slide_tiler import TileOptions, tile_slide

SIZE = (32, 32)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """Four demo slides tiled at 64 px / 1 um/px: (name, slide path, coords path, coords) each."""
    from medconv.demo.wsi import generate_demo_slides

    root = tmp_path_factory.mktemp("stream")
    generate_demo_slides(root, n_slides=4, seed=5, width=1024, height=768)
    out = []
    for k in range(4):
        name = f"demo_{k:03d}"
        path = root / "slides" / f"{name}.tif"
        tile_slide(path, root / "coords", name, TileOptions(target_mpp=1.0, tile_size=64))
        coords, _ = read_coords(root / "coords" / f"{name}.h5")
        out.append((name, path, root / "coords" / f"{name}.h5", coords))
    return out


def collect(stream: SlideStream, workers: int, on_start=lambda: None) -> list[dict]:
    loader = StreamLoader(stream, batch_size=None, num_workers=workers, on_start=on_start)
    return list(loader)


def sequence(batches: list[dict]) -> list[tuple[str, int, int]]:
    return [(s, int(x), int(y)) for b in batches if keys.ERROR not in b
            for s, x, y in zip(b[keys.SLIDE_ID], b[keys.X], b[keys.Y], strict=True)]


def expected(slides) -> list[tuple[str, int, int]]:
    return [(name, int(x), int(y)) for name, _, _, coords in slides for x, y in coords]


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_exact_order_across_slides_while_they_are_tiled(tiled, workers):
    """The preparer publishes the slides one by one after the loader started (one has no tiles): the stream
    still gives every tile once, slide after slide, in coords order, and batches never straddle slides."""
    assert all(len(c) > 7 for *_, c in tiled)
    board = SlideBoard(len(tiled))
    slides = [(name, path, coords_path, None) for name, path, coords_path, _ in tiled]

    def publish() -> None:
        for k, (*_, coords) in enumerate(tiled):
            time.sleep(0.05)  # tiling takes time: the workers wait for each slide
            board.nothing(k) if k == 2 else board.ready(k, len(coords))

    thread = threading.Thread(target=publish)
    batches = collect(SlideStream(slides, board, SIZE, batch_size=7), workers, on_start=thread.start)
    thread.join()
    kept = [t for k, t in enumerate(tiled) if k != 2]
    assert sequence(batches) == expected(kept)
    assert all(len(set(b[keys.SLIDE_ID])) == 1 for b in batches)
    first = batches[0][keys.IMAGE]
    assert first.shape == (7, 3, *SIZE) and first.dtype.is_floating_point is False
    assert first.is_contiguous(memory_format=torch.channels_last)


def test_an_unreadable_slide_gives_error_batches_and_the_others_keep_their_order(tiled, tmp_path):
    """A slide file truncated after tiling: its batches come back as errors with the reason, the rest is exact."""
    broken = tmp_path / "broken.tif"
    broken.write_bytes(tiled[1][1].read_bytes()[:4096])
    slides = [(name, path, coords_path, None) for name, path, coords_path, _ in tiled[:3]]
    slides[1] = (slides[1][0], broken, slides[1][2], None)
    board = SlideBoard(3)
    for k, (*_, coords) in enumerate(tiled[:3]):
        board.ready(k, len(coords))
    batches = collect(SlideStream(slides, board, SIZE, batch_size=5), workers=2)
    errors = [b for b in batches if keys.ERROR in b]
    assert errors and all(b[keys.SLIDE_ID] == [tiled[1][0]] for b in errors)
    assert "broken.tif" in errors[0][keys.ERROR] or "TIFF" in errors[0][keys.ERROR].upper()
    assert sequence(batches) == expected([tiled[0], tiled[2]])


def test_a_corrupt_tile_mid_slide_fails_that_slide_from_there(tiled, monkeypatch):
    """Reading fails at tile 12 of the first slide: its first batches arrive, then errors; the second is whole."""
    real = tile_module.InferenceTiles.tile

    def tile(self, slide_index, tile_index):
        if self.slides[0].slide_id == tiled[0][0] and tile_index == 12:
            raise OSError("bad JPEG tile")
        return real(self, slide_index, tile_index)

    monkeypatch.setattr(tile_module.InferenceTiles, "tile", tile)
    slides = [(name, path, coords_path, None) for name, path, coords_path, _ in tiled[:2]]
    board = SlideBoard(2)
    for k, (*_, coords) in enumerate(tiled[:2]):
        board.ready(k, len(coords))
    batches = collect(SlideStream(slides, board, SIZE, batch_size=5), workers=0)
    errors = [b for b in batches if keys.ERROR in b]
    n_first = len(tiled[0][3])
    assert len(errors) == -(-n_first // 5) - 2  # batches 0 and 1 read, batch 2 (tile 12) on: errors
    assert "OSError: bad JPEG tile" in errors[0][keys.ERROR]
    assert sequence(batches) == expected([tiled[0]])[:10] + expected([tiled[1]])


@pytest.mark.parametrize("workers", [0, 2])
def test_nothing_to_read_still_gives_one_padding_batch(tiled, workers):
    slides = [(name, path, coords_path, None) for name, path, coords_path, _ in tiled[:2]]
    board = SlideBoard(2)
    board.nothing(0)
    board.nothing(1)
    batches = collect(SlideStream(slides, board, SIZE, batch_size=5), workers)
    assert len(batches) == 1 and batches[0][keys.SLIDE_ID] == [tile_module.PADDING_ID]
    assert np.asarray(batches[0][keys.IMAGE]).shape[1:] == (3, *SIZE)
