"""Atomic file writes: a temp file beside the target, renamed onto it only when complete.

An interrupted run never leaves a file that looks finished, and reruns can trust whatever exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """`.name.<pid>.tmp<suffix>`: hidden, unique per process, and keeps the suffix that writers key on."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; it replaces `path` if the block succeeds and is removed if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: object) -> Path:
    """Indented JSON; values JSON lacks (paths, numpy scalars) are written as their strings."""
    import json

    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_npy(path: str | Path, array) -> Path:  # noqa: ANN001
    import numpy as np

    with atomic_path(path) as tmp:
        np.save(tmp, array)
    return Path(path)
