"""Benchmark rows measured in fresh Python processes.

Peak RSS on a CPU is per process, and a CUDA out-of-memory error can leave the allocator fragmented, so
each call gets a process of its own. `run_many` measures several rows in one process (CUDA peak memory
is reset per row; only the import and start-up cost is shared) for rows that are expected to fit;
`run_search` finds the largest batch in one process (`search.climb`): rising until the first failure,
then bisecting, rows after an out-of-memory error included (they can only err low).

Worker protocol: `python -m medconv.bench.isolated ROWS|--search SPEC` prints one `RESULT {...}` line per
row, flushed as soon as it is measured, so a timeout keeps the rows before it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace

from medconv.bench.measure import Config, measure
from medconv.bench.search import climb

RESULT = "RESULT "


def run_command(cmd: list[str], timeout_s: float, cwd: str | None = None,
                env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """(returncode or None on timeout, stdout, stderr); a timeout (math.inf: none) kills the whole process group.

    The group matters: pytest and torch.compile start helper processes that would outlive a plain kill.
    """
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(timeout_s, 1) if math.isfinite(timeout_s) else None)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()  # what was printed before the timeout is kept
        return None, out, err
    except BaseException:  # Ctrl-C: a child detached from the terminal gets no SIGINT, so end it here
        _kill_group(proc.pid)
        raise


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _worker(args: list[str], timeout_s: float) -> tuple[list[dict], str | None]:
    """The rows a worker printed, and why it stopped early (None when it ended normally)."""
    code, out, err = run_command([sys.executable, "-m", "medconv.bench.isolated", *args], timeout_s)
    rows = [json.loads(line[len(RESULT):]) for line in out.splitlines() if line.startswith(RESULT)]
    if code == 0:
        return rows, None
    tail = (err or out).strip().splitlines()[-1:] or ["no output"]
    if code is None:
        return rows, f"error: timeout after {timeout_s:.0f}s"
    if "out of memory" in tail[0].lower() or code in (-9, 137):
        return rows, "oom"
    return rows, f"error: {tail[0][:200]}"


def run_many(cfgs: list[Config], timeout_s: float = 3600) -> list[dict]:
    """`measure` each config, in order, in one fresh process; rows it did not reach say why."""
    if not cfgs:
        return []
    rows, why = _worker([json.dumps([asdict(c) for c in cfgs])], timeout_s)
    why = why or "error: no result"
    return rows + [asdict(c) | {"status": why, "pixels": c.height * c.width} for c in cfgs[len(rows):]]


def run_isolated(cfg: Config, timeout_s: float = 3600) -> dict:
    """`measure(cfg)` in a fresh Python process, so its peak memory is its own."""
    return run_many([cfg], timeout_s)[0]


def run_search(cfg: Config, capacity_mb: float, limit: int, timeout_s: float) -> tuple[list[dict], str | None]:
    """Batch 1 and 2, rising batches near the predicted largest one, then bisection (`climb`); one process.

    Returns the rows measured and, if the worker stopped early (timeout, crash), why.
    """
    spec = {"config": asdict(cfg), "capacity_mb": capacity_mb if math.isfinite(capacity_mb) else None, "limit": limit}
    return _worker(["--search", json.dumps(spec)], timeout_s)


def _measure_and_print(cfg: Config) -> dict:
    import gc

    import torch

    row = measure(cfg)
    print(RESULT + json.dumps(row), flush=True)
    gc.collect()  # Lightning's trainer holds reference cycles: free this row's memory before the next
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def search_worker(spec: dict) -> None:
    cfg = Config(**spec["config"])
    climb(lambda batch: _measure_and_print(replace(cfg, batch_size=batch)), spec["capacity_mb"] or math.inf,
          spec["limit"])


def worker(payload: str) -> int:
    items = json.loads(payload)
    for item in items if isinstance(items, list) else [items]:
        _measure_and_print(Config(**item))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--search":
        search_worker(json.loads(sys.argv[2]))
    else:
        worker(sys.argv[1])
