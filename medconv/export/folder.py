"""Write an export folder atomically: every file goes into a hidden temp folder beside DIR, which becomes DIR by one
rename once all of it is written and checked, so an interrupted export never leaves a folder that looks complete.

A non-empty DIR is refused unless `force`. With `force`, a DIR holding only export files is swapped for the new one
(two renames); a DIR holding other files too (a clone of the hub repo: `.git`, `.gitattributes`) keeps them, and
each export file is replaced by its own rename.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medconv.errors import ConfigError

EXPORT_FILES = ("model.safetensors", "config.json", "README.md", "medconv.ckpt")


def check_target(out: Path, force: bool) -> None:
    """Refuse a DIR that is a file, or that holds anything, unless `force` (before any work is done)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file, not a folder; choose another --out.")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not force:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(f"{out}: not empty ({shown}); pass --force to replace the export in it, or choose another --out.")


@contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty temp folder beside `out`; when the block succeeds its files become `out`, else it is removed."""
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path) -> None:
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if not entries:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
        return
    if entries <= set(EXPORT_FILES):  # an earlier export: swap the folders
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    for name in EXPORT_FILES:  # other files are the user's: keep them, replace ours one by one
        if (tmp / name).exists():
            os.replace(tmp / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)  # from an earlier export that wrote it, e.g. medconv.ckpt
