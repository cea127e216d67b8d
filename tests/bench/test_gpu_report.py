"""The tables of `medconv bench gpu`, on made-up rows: the figures a reader of docs/benchmarks.md looks for."""

from __future__ import annotations

from medconv.bench.gpu_report import (
    infer_table,
    max_batch_table,
    memory_growth,
    memory_table,
    outcomes_table,
    overhead_table,
    parse_pytest,
    render,
)


def mem_row(model, size, attention, peak, status="ok", ips=2.0):
    return {"model": model, "height": size, "width": size, "attention": attention, "peak_mem_mb": peak,
            "status": status, "images_per_s": ips, "mem_kind": "cuda_peak_allocated"}


MEMORY = [
    mem_row("hiera_tiny_224", 1024, "auto", 4000.0), mem_row("hiera_tiny_224", 2048, "auto", 15000.0),
    mem_row("hiera_tiny_224", 1024, "math", 6000.0), mem_row("hiera_tiny_224", 2048, "math", 60000.0),
    mem_row("swin_tiny_patch4_window7_224", 1024, "auto", 3000.0),
    mem_row("swin_tiny_patch4_window7_224", 2048, "auto", 14000.0),
    mem_row("pvt_v2_b2", 1024, "auto", 5000.0), mem_row("pvt_v2_b2", 2048, "auto", float("nan"), status="oom"),
]


def cells(table: str, first: str) -> list[str]:
    """The cells of the first row of a Markdown table whose first cell is `first` (or starts the row)."""
    for line in table.splitlines():
        parts = [c.strip() for c in line.strip("|").split("|")]
        if parts[0] == first:
            return parts
    raise AssertionError(f"no row {first!r} in\n{table}")


def test_memory_growth_is_peak_at_the_larger_size_over_the_smaller():
    growth = {(g["model"], g["attention"]): g for g in memory_growth(MEMORY)}
    assert growth["hiera_tiny_224", "auto"]["growth"] == 3.75
    assert growth["hiera_tiny_224", "math"]["growth"] == 10.0
    assert growth["swin_tiny_patch4_window7_224", "auto"]["growth"] == 4.67
    oom = growth["pvt_v2_b2", "auto"]
    assert oom["growth"] is None and oom["large_peak_mb"] is None and oom["status"] == "ok / oom"


def test_memory_table_judges_only_sdpa_rows_against_the_goal():
    table = memory_table(MEMORY)
    header = cells(table, "model")
    assert header[:7] == ["model", "kernel", "peak MiB 1024²", "peak MiB 2048²", "growth", "goal ≤ 4.3x (SDPA)",
                          "img/s 2048²"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    verdicts = {(r[0], r[1]): (r[4], r[5]) for r in rows}
    assert verdicts["hiera_tiny_224", "auto"] == ("**3.75x**", "met")
    assert verdicts["hiera_tiny_224", "math"] == ("**10.00x**", "–")  # math shows the quadratic term, no goal
    assert verdicts["swin_tiny_patch4_window7_224", "auto"] == ("**4.67x**", "**missed**")
    assert verdicts["pvt_v2_b2", "auto"] == ("–", "–")
    assert len(rows) == 4 and "15,000" in table


def test_overhead_table_shows_both_rates_and_the_ratio_against_the_goal():
    result = {"model": "convnext_tiny", "image_size": [224, 224], "batch": 128, "precision": "bf16",
              "bare_images_per_s": 2500.0, "medconv_images_per_s": 2450.0, "ratio": 0.98}
    row = cells(overhead_table(result | {"medconv_fit_tail_s": 0.41}), "convnext_tiny")
    assert row == ["convnext_tiny", "224²", "128", "bf16", "2,500.0", "2,450.0", "**0.980**", "met", "0.41"]
    assert cells(overhead_table(result | {"ratio": 0.9}), "convnext_tiny")[7:] == ["**missed**", "–"]
    assert overhead_table(None) == "_not measured_"


def test_max_batch_table_one_row_per_model_with_the_search_in_numbers():
    rows = [
        {"model": "convnext_tiny", "height": 2048, "width": 1024, "precision": "bf16-mixed", "grad_checkpointing": True,
         "memory_budget_gb": 80.0, "max_batch": 37, "peak_mem_mb": 76000.0, "per_image_mb": 2000.0,
         "trials": [[1, "ok"], [2, "ok"], [37, "ok"], [38, "oom"]], "note": ""},
        {"model": "hiera_tiny_224", "height": 2048, "width": 1024, "precision": "bf16-mixed",
         "grad_checkpointing": True, "memory_budget_gb": 80.0, "max_batch": 0, "trials": [], "note": "not run: budget"},
    ]
    table = max_batch_table(rows)
    assert cells(table, "convnext_tiny") == ["convnext_tiny", "2048x1024", "bf16-mixed", "yes", "80", "**37**", "76,000",
                                             "2,000", "4", ""]
    assert cells(table, "hiera_tiny_224")[5:] == ["0", "–", "–", "0", "not run: budget"]


PYTEST_OUT = """\
tests/gpu/test_flash_attention.py::test_flash_kernel_is_selected_at_bf16 PASSED                [ 25%]
tests/gpu/test_flash_attention.py::test_flash_matches_math_at_bf16[vit] FAILED                  [ 50%]
tests/gpu/test_flash_attention.py::test_compile_and_channels_last_on_gpu SKIPPED (needs CUDA)  [ 75%]
tests/gpu/test_bench_cuda.py::test_x PASSED                                                    [100%]
tests/gpu/test_bench_cuda.py::test_x ERROR                                                     [100%]
=========================== short test summary info ============================
FAILED tests/gpu/test_flash_attention.py::test_flash_matches_math_at_bf16[vit] - AssertionError: flash not used
ERROR tests/gpu/test_bench_cuda.py::test_x - RuntimeError: teardown
SKIPPED [1] tests/gpu/test_flash_attention.py:80: needs CUDA
"""


def test_parse_pytest_keeps_every_outcome_and_the_failure_messages():
    tests = {t["name"].split("::")[1]: t for t in parse_pytest(PYTEST_OUT)}
    assert {k: t["outcome"] for k, t in tests.items()} == {
        "test_flash_kernel_is_selected_at_bf16": "passed", "test_flash_matches_math_at_bf16[vit]": "failed",
        "test_compile_and_channels_last_on_gpu": "skipped", "test_x": "error",
    }
    assert tests["test_flash_matches_math_at_bf16[vit]"]["message"] == "AssertionError: flash not used"
    assert cells(outcomes_table(list(tests.values())), "`test_x`") == ["`test_x`", "error", "RuntimeError: teardown"]


def test_render_carries_machine_versions_date_and_every_goal():
    report = {
        "meta": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_mb": 81079, "torch": "2.14.1", "cuda": "13.0",
                 "timm": "1.0.31", "lightning": "2.6.6", "date": "2026-11-27 20:00 UTC", "budget_s": 420,
                 "wall_s": 401.5, "command": "medconv bench gpu --out /tmp/g"},
        "sections": {"tests": {"status": "done", "budget_s": 105, "used_s": 80.2},
                     "max_batch": {"status": "partial: budget", "budget_s": 100, "used_s": 100.0}},
        "tests": parse_pytest(PYTEST_OUT), "memory": MEMORY, "overhead": None, "max_batch": [],
    }
    text = render(report)
    assert text.startswith("**NVIDIA H100 80GB HBM3** (81,079 MiB), torch 2.14.1 (CUDA 13.0)")
    assert "2026-11-27 20:00 UTC" in text and "took 402 s of a 420 s budget" in text
    assert "Flash kernel selected at bf16: **passed**; 2 of 4 tests without failure." in text
    for heading in ("### CUDA tests", "### Peak training memory", "### Training overhead", "### Slide inference",
                    "### Largest training batch"):
        assert heading in text
    assert "CUDA peak allocated, bf16-mixed" in text
    assert text.count("_not measured_") == 3  # overhead, infer and max batch: absent, and said so
    assert cells(text, "max_batch") == ["max_batch", "partial: budget", "100", "100"]


def test_infer_table_says_whether_the_loader_keeps_up_with_the_model():
    result = {"backbone": "convnext_tiny", "tile_size": 256, "batch_size": 256, "precision": "bf16-mixed",
              "workers": 14, "workers_requested": "auto", "loader": {"tiles_per_s": 9000.0},
              "model": {"tiles_per_s": 6000.0}, "end_to_end": {"tiles_per_s": 4000.0, "slide_tiles_per_s": 4500.0,
                                                                "slides": 4}, "slide_over_model": 0.75}
    row = cells(infer_table(result), "convnext_tiny")
    assert row[4:9] == ["14 (auto)", "9,000", "6,000", "**1.50**", "met"] and row[9:] == ["4,500 (0.75)", "4"]
    result["loader"]["tiles_per_s"] = 3000.0
    assert cells(infer_table(result), "convnext_tiny")[7:9] == ["**0.50**", "**missed**"]
