"""`medconv bench gpu --out DIR`: every GPU goal of docs/benchmarks.md and the CUDA tests, in one call.

Sections run in order (tests, memory, overhead, infer, max_batch), each to completion. `--time-budget SECONDS`
bounds the whole run instead: each section gets a share of the budget plus what earlier ones left, a process
that overruns is killed, and a step with too little time left is recorded as not run. The report
(DIR/gpu_report.md: tables for docs/benchmarks.md, with GPU, versions and date; DIR/gpu_report.json: every
row) is rewritten after each section, so an interrupted run keeps what it measured. `--dry-run` lists and
checks the steps on a CPU; `--smoke` runs all of them on tiny models on the CPU (figures meaningless) to
check the wiring.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from medconv.bench.gpu_plan import SECTIONS, Plan, check_plan, describe, make_plan
from medconv.bench.gpu_report import parse_pytest, render
from medconv.bench.isolated import run_command, run_isolated, run_many, run_search
from medconv.bench.measure import Config
from medconv.bench.results import write_results
from medconv.bench.search import predict_max_batch
from medconv.io.atomic import write_json, write_text

MIN_START_S = 10.0  # a worker needs this long just to import torch and Lightning: don't start one with less
NO_CUDA = (
    "medconv bench gpu: CUDA is not available (torch {torch}, built for CUDA {cuda}); this command measures the "
    "GPU goals only. Run it on a machine with an NVIDIA GPU; `--dry-run` lists and checks the steps here, "
    "`--smoke` runs them on tiny models on the CPU."
)


class Budget:
    """Deadlines per section: a section gets its share of what is left, so unused time moves on. Without a
    total (the default), every deadline is infinitely far: each section runs to completion."""

    def __init__(self, total_s: float | None, shares: dict[str, float]):
        self.total_s, self.shares, self.start = total_s, shares, time.monotonic()

    def left(self) -> float:
        return math.inf if self.total_s is None else self.total_s - (time.monotonic() - self.start)

    def deadline(self, name: str, later: list[str]) -> float:
        if self.total_s is None:
            return math.inf
        share = self.shares[name] / sum(self.shares[s] for s in [name, *later])
        return time.monotonic() + max(0.0, self.left()) * share


class OutOfTime(Exception):
    """The section's time ran out in the middle of a search."""


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def machine(plan: Plan) -> dict:
    """Versions, date, and the GPU's name and memory from a short child process: the parent never creates a
    CUDA context, which would take GPU memory away from every measurement."""
    code = ("import json, lightning, timm, torch; meta = {'torch': torch.__version__, 'timm': timm.__version__, "
            "'lightning': lightning.__version__}\nif torch.cuda.is_available():\n    p = torch.cuda.get_device_properties(0)"
            "\n    meta |= {'gpu': p.name, 'gpu_memory_mb': p.total_memory // 2**20, 'cuda': torch.version.cuda, "
            "'cudnn': torch.backends.cudnn.version()}\nprint(json.dumps(meta))")
    rc, out, err = run_command([sys.executable, "-c", code], 120)
    meta = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {"gpu": f"unknown ({err.strip()[-200:]})"}
    meta["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if plan.device != "cuda":
        from medconv.bench.machine import cpu_model

        meta |= {"gpu": f"none (smoke run on {cpu_model()})", "cuda": "-"}
    return meta


def run_tests(plan: Plan, report: dict, deadline: float) -> str:
    if plan.tests is None or not plan.tests.is_dir():
        return "skipped: no tests/gpu folder (run from a checkout, or pass --tests PATH)"
    cmd = [sys.executable, "-m", "pytest", str(plan.tests), "-m", "gpu", "-v", "-rfE", "--tb=line",
           "-p", "no:cacheprovider"]
    # a wide "terminal": pytest cuts the failure message from a summary line longer than its width
    rc, out, err = run_command(cmd, _left(deadline), cwd=str(plan.tests.parents[1]), env={"COLUMNS": "400"})
    report["tests"] = parse_pytest(out)
    report.setdefault("logs", {})["tests"] = (out + err)[-6000:]
    if rc is None:
        return "partial: timeout"
    if rc not in (0, 1, 5):  # 1: some tests failed (the table says which); 5: none collected
        return f"error: pytest exit {rc}: {(err or out).strip()[-200:]}"
    return "done"


def run_memory(plan: Plan, report: dict, deadline: float, out: Path) -> str:
    status = "done"
    for i, group in enumerate(plan.memory):
        if _left(deadline) < MIN_START_S:
            report["memory"] += [_not_run(c) for c in group]
            status = "partial: budget"
            continue
        rows = run_many(group, _left(deadline) / (len(plan.memory) - i))  # a fair share: every model gets measured
        report["memory"] += rows
        if any(str(r.get("status")).startswith("error: timeout") for r in rows):
            status = "partial: timeout"
    write_results(report["memory"], out, stem="gpu_memory")
    return status


def _run_json(name: str, module: str, args: list[str], result: Path, report: dict, deadline: float) -> str:
    """`python -m module args` that writes its figures to `result`: they go into report[name]."""
    result.unlink(missing_ok=True)  # never report an earlier run's figures
    rc, out, err = run_command([sys.executable, "-m", module, *args], _left(deadline))
    report.setdefault("logs", {})[name] = (out + err)[-3000:]
    if rc is None:
        return "partial: timeout"
    if rc != 0 or not result.exists():
        return "error: " + ((err or out).strip().splitlines() or ["no output"])[-1][:200]
    report[name] = json.loads(result.read_text())
    return "done"


def run_overhead(plan: Plan, report: dict, deadline: float) -> str:
    return _run_json("overhead", "medconv.bench.train_overhead", plan.overhead, plan.overhead_json, report, deadline)


def run_infer(plan: Plan, report: dict, deadline: float) -> str:
    """The demo slide (made once: it stays in the temp folder for a rerun), then `bench infer` with the default
    loader workers: does the loader keep up with the model on this GPU?"""
    folder = Path(plan.infer_slide[plan.infer_slide.index("--out") + 1])
    if not (folder / "manifest.csv").exists():
        rc, out, err = run_command([sys.executable, "-m", "medconv.demo.wsi", *plan.infer_slide], _left(deadline))
        if rc != 0:
            return "partial: timeout making the demo slide" if rc is None else f"error: demo slide: {(err or out)[-200:]}"
    if _left(deadline) < 3 * MIN_START_S:
        return "not run: budget"
    return _run_json("infer", "medconv.bench.infer", plan.infer, plan.infer_json, report, deadline)


def _not_run(cfg: Config) -> dict:
    from dataclasses import asdict

    return asdict(cfg) | {"status": "not run: budget", "pixels": cfg.height * cfg.width}


def max_batch(cfg: Config, limit: int, capacity_mb: float, deadline: float) -> dict:
    """The largest training batch of `cfg` that fits, as a row with the trials that found it.

    One worker searches (`search.climb`: batch 1 and 2, a prediction from their peak memory, 90-105 % of
    it rising until one fails, then bisection). If it was cut off, fresh processes bisect what is left
    while time allows. A failure that is an error (e.g. a kernel's size limit), not an OOM, counts as
    not fitting and is named in the note; running out of time leaves the answer as a lower bound.
    """
    rows, stopped = run_search(cfg, capacity_mb, limit, _left(deadline))
    trials = {r["batch_size"]: r for r in rows}
    best = max((b for b, r in trials.items() if r["status"] == "ok"), default=0)
    upper = min((b for b, r in trials.items() if r["status"] != "ok"), default=None)
    while upper is not None and upper - best > 1 and _left(deadline) >= 2 * MIN_START_S:
        mid = (best + upper) // 2
        trials[mid] = row = run_isolated(replace(cfg, batch_size=mid), _left(deadline))
        if row["status"].startswith("error: timeout"):
            break
        best, upper = (mid, upper) if row["status"] == "ok" else (best, mid)
    why = trials[upper]["status"] if upper is not None else None
    if best == 0:
        note = f"batch 1: {trials[1]['status']}" if 1 in trials else f"not measured: {stopped}"
    elif upper is None:
        note = "the search limit" if best >= limit else f"lower bound: {stopped or 'every batch tried fitted'}"
    else:
        note = "" if upper == best + 1 else f"lower bound: batch {upper} fails, the ones between untried; "
        note = (note + (f"batch {upper}: {why}" if why != "oom" else "")).strip("; ")
    peaks = [trials[b].get("peak_mem_mb") if trials.get(b, {}).get("status") == "ok" else None for b in (1, 2)]
    per_image = peaks[1] - peaks[0] if None not in peaks else None
    row = dict(trials.get(best) or trials.get(1) or _not_run(cfg))
    row.update(max_batch=best, per_image_mb=per_image, note=note,
               predicted=predict_max_batch(*peaks, capacity_mb, limit) if per_image is not None else None,
               trials=[[b, trials[b]["status"]] for b in trials])
    return row


def run_max_batch(plan: Plan, report: dict, deadline: float, out: Path) -> str:
    status = "done"
    gpu_mb = report["meta"].get("gpu_memory_mb") or math.inf
    for i, cfg in enumerate(plan.max_batch):
        if _left(deadline) < 2 * MIN_START_S:
            report["max_batch"].append(_not_run(cfg) | {"max_batch": 0, "note": "not run: budget"})
            status = "partial: budget"
            continue
        cap_mb = min(gpu_mb, cfg.memory_budget_gb * 1024 if cfg.memory_budget_gb else math.inf)
        share = time.monotonic() + _left(deadline) / (len(plan.max_batch) - i)  # what one model leaves goes on
        # 0.93: on an H200 capped at 80 GiB, OOM came at 92-94 % of the cap in peak allocated (context, slack)
        row = max_batch(cfg, plan.max_batch_limit, 0.93 * cap_mb, share)
        report["max_batch"].append(row)
        status = f"partial: {row['note']}" if row["note"].startswith("lower bound") else status
    write_results(report["max_batch"], out, stem="gpu_max_batch", with_plot=False)
    return status


def save(report: dict, out: Path) -> None:
    write_json(out / "gpu_report.json", report)
    write_text(out / "gpu_report.md", render(report))


def run_plan(plan: Plan, out: Path, budget_s: float | None, command: str) -> dict:
    budget = Budget(budget_s, plan.shares)
    report = {"meta": machine(plan) | {"budget_s": budget_s, "command": command}, "sections": {}, "tests": [],
              "memory": [], "overhead": None, "infer": None, "max_batch": [], "logs": {}}
    for i, name in enumerate(plan.sections):
        deadline, t0 = budget.deadline(name, list(plan.sections[i + 1:])), time.monotonic()
        limit = "no time limit" if math.isinf(deadline) else f"up to {_left(deadline):.0f} s"
        print(f"[{name}] {limit}", flush=True)
        if name == "tests":
            status = run_tests(plan, report, deadline)
        elif name == "memory":
            status = run_memory(plan, report, deadline, out)
        elif name == "overhead":
            status = run_overhead(plan, report, deadline)
        elif name == "infer":
            status = run_infer(plan, report, deadline)
        else:
            status = run_max_batch(plan, report, deadline, out)
        report["sections"][name] = {"status": status, "budget_s": None if math.isinf(deadline) else round(deadline - t0),
                                    "used_s": round(time.monotonic() - t0, 1)}
        report["meta"]["wall_s"] = round(time.monotonic() - budget.start, 1)
        print(f"[{name}] {status} in {report['sections'][name]['used_s']} s", flush=True)
        save(report, out)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medconv bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_report.md / .json and the row files")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="bound the whole run to this many seconds, shared among the sections (default: no bound, "
                        "every section runs to completion)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--tests", type=Path, default=None, help="the CUDA tests (default: tests/gpu of this checkout)")
    p.add_argument("--dry-run", action="store_true", help="list the steps and check them on the meta device; no GPU")
    p.add_argument("--smoke", action="store_true", help="every step on tiny models on the CPU: checks the wiring")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.time_budget is not None and not args.time_budget > 0:
        parser.error(f"--time-budget must be a positive number of seconds, got {args.time_budget:g}")
    args.out = args.out.resolve()
    plan = make_plan(args.out, smoke=args.smoke, tests=args.tests, sections=args.sections)
    if args.dry_run:
        print("\n".join(describe(plan, args.time_budget)))
        problems = check_plan(plan)
        print("\n".join(f"problem: {p}" for p in problems) or "every step checked: models build and run at their "
              "planned sizes on the meta device, train-overhead accepts its arguments")
        return 1 if problems else 0
    import torch

    if plan.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    command = "medconv bench gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run_plan(plan, args.out, args.time_budget, command.strip())
    print(f"wrote {args.out / 'gpu_report.md'} and {args.out / 'gpu_report.json'}")
    failed = [t for t in report["tests"] if t["outcome"] in ("failed", "error")]
    errors = [s for s in report["sections"].values() if s["status"].startswith("error")]
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
