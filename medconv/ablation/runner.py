"""Run a sweep (or one shard of it): ordinary `medconv fit` + `medconv test` child processes, one record per run.

Each run is a subprocess, so a crash, an out-of-memory kill or a bad config ends that run (recorded as `failed`
with the log's tail) and never the sweep. Resume is the default: a run with an `ok` record is skipped, one whose
record is missing, failed or corrupt is done again. Pretraining runs come first (phase 1, sharded like the
fine-tunes); a fine-tune whose encoder is not there yet does the pretraining itself under a lock, or waits while
another shard holds the lock, so any set of shards finishes whatever order they run in.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medconv import __version__
from medconv.ablation import lock
from medconv.ablation.commands import evaluate_args, fit_args, pretrain_args, weights_name, weights_path
from medconv.ablation.records import read_record, record_path, set_aside, state
from medconv.ablation.sweep import PretrainRun, Run, Sweep, expand, pretrain_runs, shard
from medconv.ablation.timing import TIMING
from medconv.io.atomic import write_json

HEARTBEAT_S = 30.0
STALE_S = 600.0  # a lock untouched this long belongs to a dead shard
PHASES = ("all", "pretrain", "finetune")


@dataclass
class Child:
    returncode: int
    seconds: float
    peak_rss_mb: float | None  # the process tree's summed RSS, polled each second (None without psutil)
    cpu_s: float = 0.0  # user + system CPU seconds of the child and its workers: comparable on a busy machine


def run_child(args: list[str], log: Path, heartbeat: Path | None = None) -> Child:
    """`python -m medconv.cli ARGS` with output appended to `log`; touches `heartbeat` while it runs."""
    try:
        import psutil
    except ImportError:  # peak memory is then left to the run's own timing.json
        psutil = None
    log.parent.mkdir(parents=True, exist_ok=True)
    start, beat, peak, cpu = time.time(), time.time(), None, _children_cpu_s()
    with log.open("a") as out:
        out.write(f"$ medconv {' '.join(args)}\n")
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "medconv.cli", *args], stdout=out, stderr=subprocess.STDOUT)
        tree = psutil.Process(proc.pid) if psutil else None
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if tree is not None:
                    peak = max(peak or 0.0, _tree_rss_mb(tree, psutil))
                if heartbeat is not None and time.time() - beat > HEARTBEAT_S:
                    lock.touch(heartbeat)
                    beat = time.time()
        finally:  # interrupted (Ctrl-C, SIGTERM from SLURM): the child must not outlive the sweep
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return Child(returncode, time.time() - start, peak, _children_cpu_s() - cpu)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # cumulative over waited-for descendants
    return usage.ru_utime + usage.ru_stime


def _tree_rss_mb(proc: Any, psutil: Any) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def newest_run(root: Path, marker: str = "summary.json") -> Path | None:
    """The newest `<root>/<name>/version_N` that `medconv fit` finished (has `marker`)."""
    runs = sorted((p.parent for p in root.glob(f"*/version_*/{marker}")), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def first_stage_output(root: Path, objective: str) -> tuple[Path | None, Path | None]:
    """(run folder, weights) of a finished pretraining run: an SSL run's encoder.safetensors, or a supervised first
    stage's best checkpoint (the one its validation metric chose; its backbone initialises the fine-tunes)."""
    if objective != "supervised":
        run = newest_run(root, "encoder.safetensors")
        return run, (run / "encoder.safetensors") if run else None
    run = newest_run(root)
    best = _json(run / "summary.json").get("best_checkpoint") if run else None
    return run, Path(best) if best and Path(best).is_file() else None


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


class Runner:
    """Runs the runs of one shard of `sweep` under `out`; `say` prints progress lines."""

    def __init__(self, sweep: Sweep, out: Path, shard_index: int = 0, shard_count: int = 1, resume: bool = True,
                 say: Callable[[str], None] = print, wait_s: float = 10.0, phase: str = "all"):
        """`phase`: "all", or only "pretrain" / "finetune" (a SLURM sweep submits them as two dependent arrays)."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
        self.sweep, self.out, self.resume, self.say, self.wait_s = sweep, Path(out), resume, say, wait_s
        self.pretraining = shard(pretrain_runs(sweep), shard_index, shard_count) if phase != "finetune" else []
        self.runs = shard(expand(sweep), shard_index, shard_count) if phase != "pretrain" else []
        self.by_id = {p.run_id: p for p in pretrain_runs(sweep)}
        self.durations: list[float] = []
        self.failed_pretraining: set[str] = set()
        for run in self.runs:  # refuse a bad sweep before anything runs (overrides of sweep-owned keys, ...)
            fit_args(sweep, run, self.out, Path("encoder.safetensors"))
        for prun in self.by_id.values():
            pretrain_args(sweep, prun, self.out)

    # --- what is there ----------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, str]]:
        """(run id, state) for this shard: pretraining first, then fine-tunes."""
        rows = [(p.run_id, state(record_path(self.out, p.run_id, True))) for p in self.pretraining]
        return rows + [(r.run_id, state(record_path(self.out, r.run_id))) for r in self.runs]

    def _todo(self, path: Path) -> bool:
        current = state(path)
        if current == "corrupt":
            set_aside(path)
        return not (self.resume and current == "ok")

    def _changed(self, run: Run) -> bool:
        """The recorded fit arguments differ from today's (paths of the output folder and encoder aside)."""
        record = read_record(record_path(self.out, run.run_id))
        recorded = (record or {}).get("fit_args")
        if recorded is None:
            return False
        current = fit_args(self.sweep, run, self.out / "runs" / run.run_id, Path(record.get("encoder") or "x"))
        return _comparable(recorded) != _comparable(current)

    # --- running ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Every run of the shard that is not done; returns the number that failed."""
        tasks: list[PretrainRun | Run] = [*self.pretraining, *self.runs]
        todo = [t for t in tasks if self._todo(record_path(self.out, t.run_id, isinstance(t, PretrainRun)))]
        self.say(f"sweep {self.sweep.name}: {len(tasks)} runs in this shard, {len(tasks) - len(todo)} done, {len(todo)} to run")
        changed = [r.run_id for r in self.runs if r not in todo and self._changed(r)]
        if changed:
            self.say(f"note: {len(changed)} finished runs were made with other settings than the sweep file now gives "
                     f"(e.g. {changed[0]}); they are kept. --no-resume, or deleting their records, reruns them")
        failed = 0
        for k, task in enumerate(todo, 1):
            self.say(f"[{k}/{len(todo)}] {task.run_id} ...")
            if isinstance(task, PretrainRun):
                record = self.pretrain(task, redo=not self.resume)
            else:
                record = self.finetune(task)
            failed += record["status"] != "ok"
            self.durations.append(record["wall_s"])
            left = (len(todo) - k) * sum(self.durations) / len(self.durations)
            result = (record.get("error") or "").split("\n")[0] or _headline(record, self.sweep.metric)
            self.say(f"[{k}/{len(todo)}] {task.run_id} {record['status']} in {record['wall_s']:.0f} s ({result}); "
                     f"{len(todo) - k} left, about {left / 60:.0f} min")
        return failed

    def pretrain(self, prun: PretrainRun, redo: bool = False) -> dict:
        """Pretrain under the run's lock; while another shard holds it, wait for its record instead."""
        path = record_path(self.out, prun.run_id, pretraining=True)
        held = self.out / "locks" / f"{prun.run_id}.lock"
        waited = False
        while True:
            if not redo and state(path) == "ok":
                return read_record(path)
            if lock.try_lock(held, STALE_S):
                break
            if not waited:
                self.say(f"  waiting for {prun.run_id} (another shard holds {held})")
            waited = True
            time.sleep(self.wait_s)
        try:
            if not redo and state(path) == "ok":  # finished by another shard between the check and the lock
                return read_record(path)
            root = self.out / "pretrain" / prun.run_id
            log = self.out / "logs" / f"{prun.run_id}.log"
            child = run_child(pretrain_args(self.sweep, prun, root), log, heartbeat=held)
            run, encoder = first_stage_output(root, prun.init.objective)
            error = None if child.returncode == 0 and encoder is not None else (
                f"pretraining exited with {child.returncode} and left no weights; see {log}:\n{_tail(log)}")
            record = {
                "run_id": prun.run_id, "status": "ok" if error is None else "failed", "error": error,
                "backbone": prun.backbone.name, "family": prun.backbone.family, "init": prun.init.name,
                "split_seed": self.sweep.split_seed, "fold": prun.fold, "seed": self.sweep.pretrain_seed, "wall_s": child.seconds,
                "cpu_s": child.cpu_s,
                "peak_rss_mb": child.peak_rss_mb, "run_dir": str(run) if run else None,
                "encoder": str(encoder) if encoder else None, "objective": prun.init.objective, "log": str(log),
                "config": _config(run), "medconv": __version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json(path, record)
            if error:
                self.failed_pretraining.add(prun.run_id)
            return record
        finally:
            lock.release(held)

    def _encoder(self, run: Run) -> tuple[Path | None, str | None]:
        """(encoder, error) of a `pretrain` fine-tune; pretrains first when no shard has yet."""
        if run.pretrain_id in self.failed_pretraining:
            return None, f"pretraining {run.pretrain_id} failed; see its record"
        path = record_path(self.out, run.pretrain_id, pretraining=True)
        record = read_record(path) if state(path) == "ok" else None
        if record is None:
            self.say(f"  {run.run_id} needs {run.pretrain_id} first")
            record = self.pretrain(self.by_id[run.pretrain_id])
        if record["status"] != "ok" or not Path(record["encoder"]).is_file():
            self.failed_pretraining.add(run.pretrain_id)
            return None, f"pretraining {run.pretrain_id} left no encoder; see {path}"
        return Path(record["encoder"]), None

    def finetune(self, run: Run) -> dict:
        """fit, then test the best checkpoint; the record says what either left (or why it failed)."""
        start = time.time()
        root, log = self.out / "runs" / run.run_id, self.out / "logs" / f"{run.run_id}.log"
        record: dict[str, Any] = {
            "run_id": run.run_id, "status": "failed", "error": None, "sweep": self.sweep.name,
            "backbone": run.backbone.name, "family": run.backbone.family, "init": run.init.name,
            "init_kind": run.init.kind, "fraction": run.fraction, "seed": run.seed, "split_seed": self.sweep.split_seed,
            "steps": self.sweep.steps, "pretrain_id": run.pretrain_id, "log": str(log),
            "weights": weights_name(run.init, run.backbone) or weights_path(run.init, run.backbone),  # timm name or file
            "n_folds": self.sweep.folds, "fold": run.fold,
        }
        encoder, error = self._encoder(run) if run.init.kind == "pretrain" else (None, None)
        fit = test = None
        if error is None:
            record["encoder"] = str(encoder) if encoder else None
            record["fit_args"] = fit_args(self.sweep, run, root, encoder)
            fit = run_child(record["fit_args"], log)
            run_dir = newest_run(root)
            if fit.returncode or run_dir is None:
                error = f"fit exited with {fit.returncode}; see {log}:\n{_tail(log)}"
        if error is None:
            test = run_child(evaluate_args(run_dir), log)
            reports = sorted(run_dir.glob("eval/test-*/test_metrics.json"), key=lambda p: p.stat().st_mtime)
            if test.returncode or not reports:
                error = f"test exited with {test.returncode}; see {log}:\n{_tail(log)}"
        if error is None:
            summary, timing = _json(run_dir / "summary.json"), _json(run_dir / TIMING)
            best_val = summary.get("best_val") or {}
            record |= {
                "status": "ok", "run_dir": str(run_dir), "config": _config(run_dir),
                "val": best_val, "test": _json(reports[-1]).get("metrics", {}),
                # per test image: image_id, patient_id, label_index, label, prob_<class>: what out-of-fold pooling reads
                "test_predictions": _existing(reports[-1].parent / "test_predictions.csv"),
                "best_epoch": best_val.get("epoch"), "best_step": best_step(run_dir / "metrics.csv", summary.get("monitor")),
                "best_checkpoint": summary.get("best_checkpoint"),
                "fit_s": fit.seconds, "test_s": test.seconds, "cpu_s": fit.cpu_s + test.cpu_s,
                "peak_rss_mb": max(v for v in (fit.peak_rss_mb, timing.get("peak_rss_mb"), 0.0) if v is not None),
                "cuda_peak_mb": timing.get("cuda_peak_mb"), "train_images_per_s": timing.get("train_images_per_s"),
                "device": timing.get("device"),
            }
        record |= {"error": error, "wall_s": time.time() - start, "medconv": __version__,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(record_path(self.out, run.run_id), record)
        return record


def _comparable(args: list[str]) -> list[str]:
    skip = ("--trainer.default_root_dir=", "--model.init_args.backbone.init_args.pretrained_path=")
    return [a for a in args if not a.startswith(skip)]


def best_step(metrics_csv: Path, monitor: str | None) -> int | None:
    """The step logged with the best validation value (the first on ties, as ModelCheckpoint keeps it)."""
    import pandas as pd

    if not monitor or not metrics_csv.is_file():
        return None
    values = pd.read_csv(metrics_csv)
    if monitor not in values.columns or values[monitor].isna().all():
        return None
    best = values[monitor].idxmin() if "loss" in monitor else values[monitor].idxmax()
    return int(values.loc[best, "step"])


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _config(run_dir: Path | None) -> dict | None:
    path = run_dir / "config.yaml" if run_dir else None
    return yaml.safe_load(path.read_text()) if path and path.is_file() else None


def _headline(record: dict, metric: str) -> str:
    value = (record.get("test") or {}).get(metric)
    return f"test {metric} {value:.3f}" if isinstance(value, float) else "done"
