"""`medconv bench gpu` without a GPU: a clear refusal, a checked plan, and every step run on tiny models."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace

import pytest
import torch

from medconv.bench import gpu
from medconv.bench.gpu_plan import MAX_BATCH_MODELS, MEMORY_MODELS, check_plan, make_plan
from medconv.bench.measure import Config
from medconv.bench.search import climb


def test_without_cuda_it_exits_2_with_a_clear_message_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--dry-run" in err and torch.__version__ in err
    assert not (tmp_path / "g").exists()


def test_dry_run_lists_every_goal_and_checks_it_on_the_meta_device(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for section in ("[tests]", "[memory]", "[overhead]", "[infer]", "[max_batch]"):
        assert f"{section} runs to completion" in out  # no time bound unless the user asks for one
    assert "up to" not in out
    assert "python -m medconv.bench.infer --slide" in out and "--model convnext_tiny --tile-size 256" in out
    assert "--num-workers" not in out  # the goal is about the workers `medconv infer` picks by default
    assert "-m pytest" in out and "tests/gpu -m gpu" in out
    for model in MEMORY_MODELS:  # SDPA vs math at 1024² and 2048², one process per model
        assert f"one process: {model} train bf16-mixed" in out
    assert out.count("auto 1024x1024, auto 2048x2048, math 1024x1024, math 2048x2048") == len(MEMORY_MODELS)
    assert "--model convnext_tiny --image-size 224 224 --batch 128" in out and "--precision bf16" in out
    for model in MAX_BATCH_MODELS:
        assert f"{model} 2048x1024 bf16-mixed checkpointing=True cap=80.0 GiB" in out
    assert "problem" not in out and "every step checked" in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_dry_run_reports_a_size_a_model_cannot_take(tmp_path):
    plan = make_plan(tmp_path, sections=("max_batch",))
    plan.max_batch = [replace(plan.max_batch[2], height=1000, width=1000)]  # hiera: not a multiple of 32
    (problem,) = check_plan(plan)
    assert problem.startswith("hiera_tiny_224 1000x1000") and "multiple of" in problem


def test_a_time_budget_is_shared_among_the_sections_in_the_dry_run(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path), "--dry-run", "--sections", "tests", "memory", "--time-budget", "490"]) == 0
    out = capsys.readouterr().out  # shares 0.22 and 0.27 of 490 s
    assert "[tests] up to 220 s, plus what earlier sections leave" in out and "[memory] up to 270 s" in out


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_time_budget_must_be_positive(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu.main(["--out", str(tmp_path), "--dry-run", "--time-budget", value])
    assert exit_.value.code == 2 and "--time-budget must be a positive number of seconds" in capsys.readouterr().err


def test_without_a_budget_no_section_has_a_deadline():
    budget = gpu.Budget(None, {"a": 1.0, "b": 1.0})
    assert budget.deadline("a", ["b"]) == budget.deadline("b", []) == math.inf and budget.left() == math.inf


def test_budget_gives_each_section_its_share_of_what_is_left():
    budget = gpu.Budget(100.0, {"a": 1.0, "b": 1.0, "c": 2.0})
    now = time.monotonic()
    assert budget.deadline("a", ["b", "c"]) - now == pytest.approx(25, abs=1)
    assert budget.deadline("c", []) - now == pytest.approx(100, abs=1)  # the last section gets all that is left


def fake_gpu(per_image: float, fixed: float, fits_mb: float, calls: list[int], error_from: int = 10**9):
    """Stand-ins for the worker processes: memory grows linearly with the batch; over `fits_mb` is an OOM,
    from `error_from` on a kernel error (as Swin's 65535-window limit)."""

    def row_of(cfg: Config) -> dict:
        calls.append(cfg.batch_size)
        peak = fixed + per_image * cfg.batch_size
        status = "ok" if peak <= fits_mb else "oom"
        status = "error: size 65535" if cfg.batch_size >= error_from else status
        return asdict(cfg) | {"status": status, "peak_mem_mb": peak, "images_per_s": 1.0}

    def run_search(cfg, capacity_mb, limit, timeout_s):
        return climb(lambda b: row_of(replace(cfg, batch_size=b)), capacity_mb, limit), None

    return run_search, lambda cfg, timeout_s: row_of(cfg)


def test_max_batch_climbs_near_the_prediction_then_bisects_the_gap(tmp_path, monkeypatch):
    calls: list[int] = []
    # 3000 MiB fixed + 1900 per image; the allocator fails a little before the prediction says (78,000 MiB)
    search, isolated = fake_gpu(per_image=1900.0, fixed=3000.0, fits_mb=78_000.0, calls=calls)
    monkeypatch.setattr(gpu, "run_search", search)
    monkeypatch.setattr(gpu, "run_isolated", isolated)
    cfg = make_plan(tmp_path).max_batch[0]  # convnext_tiny 2048x1024, bf16, checkpointing, 80 GB
    row = gpu.max_batch(cfg, limit=1024, capacity_mb=0.97 * 80 * 1024, deadline=time.monotonic() + 600)
    assert row["max_batch"] == (78_000 - 3000) // 1900 == 39
    assert row["batch_size"] == 39 and row["peak_mem_mb"] == 3000 + 1900 * 39 and row["status"] == "ok"
    assert (row["per_image_mb"], row["predicted"], row["note"]) == (1900, 40, "")
    assert calls == [1, 2, 36, 38, 40, 39]  # probes, rising candidates until 40 fails, then the gap bisected
    assert row["trials"] == [[b, "ok" if b <= 39 else "oom"] for b in calls]


def test_max_batch_names_a_kernel_error_that_stops_the_climb(tmp_path, monkeypatch):
    calls: list[int] = []
    search, isolated = fake_gpu(per_image=700.0, fixed=500.0, fits_mb=80_000.0, calls=calls, error_from=94)
    monkeypatch.setattr(gpu, "run_search", search)
    monkeypatch.setattr(gpu, "run_isolated", isolated)
    row = gpu.max_batch(make_plan(tmp_path).max_batch[1], 1024, 77_000.0, time.monotonic() + 600)
    assert row["max_batch"] == 93 and row["note"] == "batch 94: error: size 65535"


def test_max_batch_bisects_in_fresh_processes_what_a_cut_off_worker_left(tmp_path, monkeypatch):
    calls: list[int] = []
    search, isolated = fake_gpu(per_image=1900.0, fixed=3000.0, fits_mb=78_000.0, calls=calls)
    monkeypatch.setattr(gpu, "run_search", lambda *a: (search(*a)[0][:5], "error: timeout after 40s"))  # 1 2 36 38 40
    monkeypatch.setattr(gpu, "run_isolated", isolated)
    row = gpu.max_batch(make_plan(tmp_path).max_batch[0], 1024, 0.97 * 80 * 1024, time.monotonic() + 600)
    assert row["max_batch"] == 39 and row["note"] == "" and [b for b, _ in row["trials"]][5:] == [39]


def test_max_batch_out_of_time_reports_a_lower_bound(tmp_path, monkeypatch):
    calls: list[int] = []
    search, _ = fake_gpu(per_image=10.0, fixed=100.0, fits_mb=1000.0, calls=calls)
    monkeypatch.setattr(gpu, "run_search", lambda *a: (search(*a)[0][:3], "error: timeout after 40s"))
    cfg = Config(model="convnext_tiny", height=64, width=64, batch_size=1, device="cuda")
    row = gpu.max_batch(cfg, limit=1024, capacity_mb=1000.0, deadline=time.monotonic() + 1)  # < MIN_START_S
    assert row["max_batch"] == 81 and row["note"] == "lower bound: error: timeout after 40s"
    assert [b for b, _ in row["trials"]] == [1, 2, 81]


@pytest.mark.slow
def test_smoke_runs_the_measurements_on_tiny_models_and_writes_the_report(tmp_path):
    """The real wiring (worker processes, probes, search, report files) on the CPU; figures meaningless."""
    code = gpu.main(["--out", str(tmp_path), "--smoke", "--sections", "memory", "max_batch"])
    assert code == 0
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["sections"]["memory"]["status"] == report["sections"]["max_batch"]["status"] == "done"
    assert [(r["attention"], r["height"], r["status"]) for r in report["memory"]] == [
        ("auto", 64, "ok"), ("auto", 128, "ok"), ("math", 64, "ok"), ("math", 128, "ok")]
    (best,) = report["max_batch"]
    assert best["max_batch"] == 4 and best["status"] == "ok"  # the smoke limit: every batch fits on the CPU
    assert [b for b, _ in best["trials"]] == [1, 2, 4]  # two probes in one process, then the limit
    text = (tmp_path / "gpu_report.md").read_text()
    assert "| swin_tiny_patch4_window7_224 | auto |" in text and "| convnext_atto | 64x32 | 32 | yes |" in text
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["gpu_max_batch.csv", "gpu_max_batch.json", "gpu_memory.csv",
                     "gpu_memory.json", "gpu_memory.png", "gpu_report.json", "gpu_report.md"]


def test_overhead_section_runs_train_overhead_with_the_planned_arguments(tmp_path, monkeypatch):
    """The smoke plan's train-overhead arguments, run in this process instead of a child (saves the imports)."""
    from medconv.bench import train_overhead

    plan = make_plan(tmp_path, smoke=True, sections=("overhead",))
    plan.overhead_json.write_text('{"stale": true}')  # an earlier run's file must not be reported

    def in_process(cmd, timeout_s, cwd=None):
        assert cmd[1:3] == ["-m", "medconv.bench.train_overhead"]
        assert not plan.overhead_json.exists()
        return train_overhead.main(cmd[3:]), "", ""

    monkeypatch.setattr(gpu, "run_command", in_process)
    report = {"overhead": None, "logs": {}}
    assert gpu.run_overhead(plan, report, time.monotonic() + 300) == "done"
    assert report["overhead"]["model"] == "convnext_atto" and math.isfinite(report["overhead"]["ratio"])
    monkeypatch.setattr(gpu, "run_command", lambda cmd, timeout_s, cwd=None: (1, "", "Traceback\nValueError: boom"))
    assert gpu.run_overhead(plan, report, time.monotonic() + 300) == "error: ValueError: boom"


def test_tests_section_runs_only_gpu_tests_and_records_each_outcome(tmp_path, monkeypatch, capsys):
    """The default run (no --time-budget): the section runs its child to completion, and the report says no budget."""
    folder = tmp_path / "repo" / "tests" / "gpu"
    folder.mkdir(parents=True)
    (folder / "test_fake.py").write_text(
        "import pytest\n"
        "pytestmark = pytest.mark.gpu\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert 1 == 2, 'kernels differ'\n"
    )
    (folder / "test_unmarked.py").write_text("def test_not_gpu():\n    pass\n")
    plan = make_plan(tmp_path, tests=folder, sections=("tests",))
    monkeypatch.setattr(gpu, "machine", lambda plan: {"gpu": "none (test)"})  # saves a child process importing torch
    report = gpu.run_plan(plan, tmp_path, None, "medconv bench gpu --out x --sections tests")
    outcomes = {t["name"].split("::")[1]: (t["outcome"], t["message"]) for t in report["tests"]}
    assert outcomes == {"test_ok": ("passed", ""), "test_bad": ("failed", "AssertionError: kernels differ")}
    assert report["sections"]["tests"]["status"] == "done" and report["sections"]["tests"]["budget_s"] is None
    assert "[tests] no time limit" in capsys.readouterr().out
    first_line = (tmp_path / "gpu_report.md").read_text().splitlines()[0]
    assert "`medconv bench gpu --out x --sections tests` took" in first_line and "budget" not in first_line


@pytest.mark.slow
def test_infer_section_makes_a_demo_slide_once_and_reports_loader_against_model(tmp_path):
    """The smoke plan on the CPU: a tiny demo slide, then `bench infer` in a child process, default workers."""
    import shutil

    plan = make_plan(tmp_path, smoke=True, sections=("infer",))
    shutil.rmtree(plan.infer_slide[plan.infer_slide.index("--out") + 1], ignore_errors=True)
    report: dict = {"logs": {}}
    assert gpu.run_infer(plan, report, time.monotonic() + 300) == "done", report["logs"].get("infer")
    result = report["infer"]
    assert result["workers_requested"] == "auto" and result["workers"] >= 1
    assert result["loader"]["tiles_per_s"] > 0 and result["model"]["tiles_per_s"] > 0
    assert result["end_to_end"]["slides"] == 2 and result["end_to_end"]["failed"] == 0
