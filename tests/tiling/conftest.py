"""Small demo slides shared by the tiling tests (generated once per session, a second or so)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_slides(tmp_path_factory) -> Path:
    """Folder with 3 demo slides (1024x768 px at 0.5 mpp; demo_001 has tumour) and manifest.csv."""
    from medconv.demo.wsi import generate_demo_slides

    out = tmp_path_factory.mktemp("demo_wsi")
    generate_demo_slides(out, n_slides=3, seed=0, width=1024, height=768)
    return out
