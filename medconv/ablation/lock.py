"""A lock file that says "this pretraining run is being done", safe across processes and SLURM nodes.

Created with O_EXCL (atomic on local and NFS v3+ file systems); the holder touches it while it works, so a lock
whose holder died (a killed job leaves it behind) goes stale after `stale_s` and another shard takes over.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def try_lock(path: Path, stale_s: float = 600.0) -> bool:
    """Take the lock at `path`; True when taken (a stale lock is broken first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and (time.time() - _mtime(path) > stale_s or _dead_holder(path)):
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return True


def touch(path: Path) -> None:
    """The holder's heartbeat."""
    if path.exists():
        os.utime(path)


def release(path: Path) -> None:
    path.unlink(missing_ok=True)


def _dead_holder(path: Path) -> bool:
    """The lock was taken on this host by a process that no longer exists (killed without releasing it)."""
    try:
        host, _, pid = path.read_text().split()[:3]
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
