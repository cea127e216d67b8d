"""`medconv ablate`: run a sweep file (backbones x inits x label fractions x seeds), then `medconv ablate report`.

    medconv ablate --config configs/ablation/wsi_cpu.yaml                 run (or resume) every run here
    medconv ablate --config configs/ablation/wsi_cpu.yaml --dry-run       list the runs and which are done
    medconv ablate --config ... --shard 1/4                               one deterministic quarter of the runs
    medconv ablate --config ... --launcher slurm --slurm-partition gpu    one SLURM job array of shards
    medconv ablate report runs/ablation/wsi_cpu                           tables, plots, conclusions
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from medconv.ablation.commands import fit_args
from medconv.ablation.launch import run_shard, slurm_parameters, submit_slurm
from medconv.ablation.runner import Runner
from medconv.ablation.sweep import Sweep, expand, load_sweep, parse_shard, pretrain_runs
from medconv.ablation.weights_check import check as check_weights
from medconv.io.atomic import write_text

STATE_LABELS = {"ok": "done", "failed": "failed (will rerun)", "missing": "to run", "corrupt": "corrupt record (will rerun)"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medconv ablate", description=__doc__.splitlines()[0],
                                     epilog="`medconv ablate report DIR [--out OUT]` writes the report of a sweep's records.")
    parser.add_argument("--config", type=Path, required=True, help="sweep file (configs/ablation/*.yaml; docs/ablation.md)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/ablation/<sweep name>)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs (and which are done) without running")
    parser.add_argument("--shard", default="0/1", help="i/n: run only runs[i::n] of the sorted runs (default 0/1: all)")
    parser.add_argument("--no-resume", action="store_true", help="rerun runs that already have a record")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local")
    slurm = parser.add_argument_group("slurm (with --launcher slurm; needs `pip install medconv[slurm]`)")
    slurm.add_argument("--slurm-shards", type=int, default=None, help="array size (default: one task per fine-tune)")
    slurm.add_argument("--slurm-partition")
    slurm.add_argument("--slurm-gpus-per-node", type=int)
    slurm.add_argument("--slurm-time", type=int, help="minutes per array task")
    slurm.add_argument("--slurm-cpus-per-task", type=int)
    slurm.add_argument("--slurm-mem", help="memory per node, e.g. 64G")
    slurm.add_argument("--slurm-array-parallelism", type=int, help="array tasks running at once")
    slurm.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                       help="any further #SBATCH option, e.g. account=myproj (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv and argv[0] == "report":
        from medconv.ablation.report_writer import main as report_main

        return report_main(argv[1:])
    args = _parser().parse_args(argv)
    sweep = load_sweep(args.config)
    out = args.out or Path("runs") / "ablation" / sweep.name
    index, count = parse_shard(args.shard)
    resume = not args.no_resume
    if args.dry_run:
        return _dry_run(sweep, out, index, count, resume)
    check_weights(sweep)  # every arm's weights are here (or fetched now) before any run starts or is submitted
    write_text(out / "sweep.yaml", args.config.read_text())  # what produced these records
    if args.launcher == "slurm":
        shards = args.slurm_shards or len(expand(sweep))
        params = slurm_parameters(args.slurm_partition, args.slurm_gpus_per_node, args.slurm_time, args.slurm_cpus_per_task,
                                  args.slurm_mem, args.slurm_array_parallelism, args.slurm_extra, job_name=f"ablate-{sweep.name}")
        n_pretrain = len(pretrain_runs(sweep))
        jobs = submit_slurm(args.config.resolve(), out.resolve(), shards, params, resume, pretrain_shards=n_pretrain)
        first = f"{n_pretrain} pretraining tasks, then " if n_pretrain else ""
        print(f"submitted {first}job array {jobs[0].job_id.split('_')[0]} ({shards} fine-tune tasks); logs in "
              f"{out / 'slurm'}; then: medconv ablate report {out}")
        return 0
    failed = run_shard(str(args.config), str(out), index, count, resume)
    print(f"{'all runs finished' if not failed else f'{failed} run(s) failed (rerun the same command to retry them)'}; "
          f"records in {out / 'records'}; report: medconv ablate report {out}")
    return 1 if failed else 0


def _dry_run(sweep: Sweep, out: Path, index: int, count: int, resume: bool) -> int:
    runner = Runner(sweep, out, index, count, resume=resume)
    plan = runner.plan()
    n_pre, n_all = len(pretrain_runs(sweep)), len(expand(sweep))
    print(f"sweep {sweep.name}: {n_all} fine-tunes + {n_pre} pretraining runs in all; shard {index}/{count} has "
          f"{len(plan)}; output {out}")
    for run_id, state in plan:
        label = STATE_LABELS[state] if resume or state != "ok" else "done (will rerun: --no-resume)"
        print(f"  {label:<28} {run_id}")
    if runner.runs:
        example = runner.runs[0]
        args = fit_args(sweep, example, out / "runs" / example.run_id, out / "pretrain" / "<encoder.safetensors>")
        print(f"\nfirst fine-tune's command:\n  medconv {shlex.join(args)}\n  then medconv test --config <its run>/config.yaml --ckpt_path best")
    check_weights(sweep, fetch=False)  # lists each arm's weights; raises (before any run) when one is missing
    return 0
