"""Where a sweep's shards run: here, one after the other (`local`), or as one SLURM job array (`slurm`, via submitit).

Each array task runs `run_shard(i, n)`, the same code as `medconv ablate --shard i/n`, so a cluster sweep and a
local one write the same records and either can resume the other.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from medconv.ablation.runner import Runner
from medconv.ablation.sweep import load_sweep
from medconv.errors import ConfigError


def run_shard(sweep_path: str, out: str, index: int = 0, count: int = 1, resume: bool = True, phase: str = "all") -> int:
    """Run one shard of the sweep file; returns the number of failed runs. Top-level so submitit can pickle it.
    SIGTERM (a SLURM time limit, `kill`) ends it like Ctrl-C: the running child is stopped and the lock released."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return Runner(load_sweep(sweep_path), Path(out), index, count, resume=resume, say=lambda s: print(s, flush=True),
                  phase=phase).run()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def slurm_parameters(partition: str | None = None, gpus_per_node: int | None = None, time_min: int | None = None,
                     cpus_per_task: int | None = None, mem: str | None = None, array_parallelism: int | None = None,
                     extra: list[str] | None = None, job_name: str = "medconv-ablate") -> dict[str, Any]:
    """`submitit.SlurmExecutor` parameters from the command line's --slurm-* options (unset ones left out);
    `extra` entries `key=value` become further `#SBATCH --key=value` lines."""
    params: dict[str, Any] = {"job_name": job_name}
    for key, value in (("partition", partition), ("gpus_per_node", gpus_per_node), ("time", time_min),
                       ("cpus_per_task", cpus_per_task), ("mem", mem), ("array_parallelism", array_parallelism)):
        if value is not None:
            params[key] = value
    additional = {}
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-extra {item!r}: write it as key=value (e.g. account=myproj, qos=high)")
        additional[key.lstrip("-")] = value
    if additional:
        params["additional_parameters"] = additional
    return params


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as err:
        raise ConfigError("--launcher slurm needs submitit: pip install 'medconv[slurm]' (or pip install submitit)") from err
    return submitit


def submit_slurm(sweep_path: str | Path, out: str | Path, shards: int, params: dict[str, Any], resume: bool = True,
                 pretrain_shards: int = 0) -> list:
    """Submit the fine-tunes as one job array of `shards` tasks (task i runs shard i/shards) and returns its jobs.

    With `pretrain_shards` > 0 the pretraining runs go first, as their own array, and the fine-tune array waits
    for it to end (`--dependency=afterany`), so no GPU idles in a fine-tune waiting for an encoder; a fine-tune
    whose pretraining failed still retries it (under the lock) and records a failure if it fails again."""
    submitit = _submitit()
    if shards < 1:
        raise ConfigError(f"--slurm-shards must be at least 1, not {shards}")
    folder = str(Path(out) / "slurm" / "%j")
    common = ([str(sweep_path)], [str(out)])
    if pretrain_shards:
        first = submitit.SlurmExecutor(folder=folder)
        first.update_parameters(**params | {"job_name": f"{params.get('job_name', 'ablate')}-pretrain"})
        n = pretrain_shards
        pretrain_jobs = first.map_array(run_shard, common[0] * n, common[1] * n, list(range(n)), [n] * n, [resume] * n,
                                        ["pretrain"] * n)
        array_id = pretrain_jobs[0].job_id.split("_")[0]
        extra = dict(params.get("additional_parameters") or {}, dependency=f"afterany:{array_id}")
        params = params | {"additional_parameters": extra}
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(**params)
    n = shards
    return executor.map_array(run_shard, common[0] * n, common[1] * n, list(range(n)), [n] * n, [resume] * n,
                              ["finetune" if pretrain_shards else "all"] * n)
