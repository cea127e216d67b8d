"""The Markdown of `medconv bench gpu`: one table per goal, ready to paste into docs/benchmarks.md.

Pure functions of the report dict (no GPU, no files), so every table is tested on made-up rows.
"""

from __future__ import annotations

import math
import re

MEMORY_GOAL = 4.3  # hierarchical ViT with SDPA: peak training memory 1024² -> 2048² grows at most this much
OVERHEAD_GOAL = 0.95  # medconv training images/s over the bare timm loop's

_PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
_PYTEST_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+::\S+)(?: - (.*))?$")


def parse_pytest(stdout: str) -> list[dict]:
    """Per-test outcomes from `pytest -v -rfE` output; a run killed half-way keeps the tests it finished."""
    tests: dict[str, dict] = {}
    for line in stdout.splitlines():
        if match := _PYTEST_LINE.match(line):
            name, outcome = match.groups()
            tests.setdefault(name, {"name": name, "outcome": outcome.lower(), "message": ""})
            if outcome == "ERROR":  # an error in teardown follows a PASSED line for the same test
                tests[name]["outcome"] = "error"
        elif match := _PYTEST_SUMMARY.match(line):
            outcome, name, message = match.groups()
            entry = tests.setdefault(name, {"name": name, "outcome": outcome.lower(), "message": ""})
            entry["message"] = (message or "")[:200]
    return list(tests.values())


def size_label(height: int, width: int) -> str:
    return f"{height}²" if height == width else f"{height}x{width}"


def _num(value, digits: int = 0) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:,.{digits}f}"
    return "–"


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def outcomes_table(tests: list[dict]) -> str:
    if not tests:
        return "_no test outcome was recorded_"
    rows = [[f"`{t['name'].split('::', 1)[-1]}`", t["outcome"], t.get("message", "")] for t in tests]
    return _table(["test (tests/gpu)", "outcome", "message"], rows)


def memory_growth(rows: list[dict]) -> list[dict]:
    """Per model and kernel: peak memory at the smallest and the largest size, and their ratio."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["attention"]), []).append(row)
    out = []
    for (model, attention), group in groups.items():
        group = sorted(group, key=lambda r: r["height"] * r["width"])
        small, large = group[0], group[-1]
        ok = all(r.get("status") == "ok" for r in (small, large)) and small is not large
        growth = large["peak_mem_mb"] / small["peak_mem_mb"] if ok and small.get("peak_mem_mb") else None
        out.append({
            "model": model, "attention": attention,
            "small": size_label(small["height"], small["width"]), "large": size_label(large["height"], large["width"]),
            "small_peak_mb": small.get("peak_mem_mb") if small.get("status") == "ok" else None,
            "large_peak_mb": large.get("peak_mem_mb") if large.get("status") == "ok" else None,
            "status": "ok" if ok else f"{small.get('status')} / {large.get('status')}",
            "growth": round(growth, 2) if growth is not None else None,
            "large_images_per_s": large.get("images_per_s") if large.get("status") == "ok" else None,
        })
    return out


def memory_table(rows: list[dict], goal: float = MEMORY_GOAL) -> str:
    growth = memory_growth(rows)
    if not growth:
        return "_not measured_"
    small, large = growth[0]["small"], growth[0]["large"]
    header = ["model", "kernel", f"peak MiB {small}", f"peak MiB {large}", "growth",
              f"goal ≤ {goal}x (SDPA)", f"img/s {large}", "status"]
    body = []
    for g in growth:
        verdict = "–"
        if g["attention"] != "math" and g["growth"] is not None:
            verdict = "met" if g["growth"] <= goal else "**missed**"
        growth_text = f"**{g['growth']:.2f}x**" if g["growth"] is not None else "–"
        body.append([g["model"], g["attention"], _num(g["small_peak_mb"]), _num(g["large_peak_mb"]), growth_text,
                     verdict, _num(g["large_images_per_s"], 2), g["status"]])
    return _table(header, body, right={2, 3, 4, 6})


def overhead_table(result: dict | None, goal: float = OVERHEAD_GOAL) -> str:
    if not result:
        return "_not measured_"
    h, w = result["image_size"]
    ratio = result["ratio"]
    verdict = "met" if ratio >= goal else "**missed**"
    header = ["model", "size", "batch", "precision", "bare timm img/s", "medconv img/s", f"ratio (goal ≥ {goal})", "goal",
              "fit after last step s"]
    row = [result["model"], size_label(h, w), result["batch"], result["precision"], _num(result["bare_images_per_s"], 1),
           _num(result["medconv_images_per_s"], 1), f"**{ratio:.3f}**", verdict, _num(result.get("medconv_fit_tail_s"), 2)]
    return _table(header, [row], right={2, 4, 5, 6, 8})


def infer_table(result: dict | None) -> str:
    """Slide inference: does the loader, with the workers `medconv infer` picks by default, keep up with the model
    (goal: loader tiles/s ≥ model tiles/s)? End to end is given for the bottleneck it shows, not as this goal."""
    if not result:
        return "_not measured_"
    loader, model, e2e = (result[k]["tiles_per_s"] for k in ("loader", "model", "end_to_end"))
    ratio = loader / model
    header = ["model", "tile", "batch", "precision", "workers", "loader tiles/s", "model tiles/s",
              "loader ÷ model (goal ≥ 1)", "goal", "per slide tiles/s (÷ model)", "slides"]
    row = [result["backbone"], f"{result['tile_size']}²", result["batch_size"], result["precision"],
           f"{result['workers']} ({result.get('workers_requested', '?')})", _num(loader), _num(model), f"**{ratio:.2f}**",
           "met" if ratio >= 1 else "**missed**",
           f"{_num(result['end_to_end']['slide_tiles_per_s'])} ({result['slide_over_model']:.2f})",
           int(result["end_to_end"].get("slides", 1))]
    return _table(header, [row], right={2, 5, 6, 7, 9, 10})


def max_batch_table(rows: list[dict]) -> str:
    if not rows:
        return "_not measured_"
    header = ["model", "size", "precision", "checkpointing", "memory cap GiB", "largest batch", "peak MiB at it",
              "MiB per image", "trials", "note"]
    body = []
    for r in rows:
        cap = r.get("memory_budget_gb")
        body.append([r["model"], size_label(r["height"], r["width"]), r["precision"],
                     "yes" if r.get("grad_checkpointing") else "no", _num(cap) if cap else "whole GPU",
                     f"**{r['max_batch']}**" if r.get("max_batch") else "0", _num(r.get("peak_mem_mb")),
                     _num(r.get("per_image_mb")), len(r.get("trials", [])), r.get("note", "")])
    return _table(header, body, right={4, 5, 6, 7, 8})


def sections_table(sections: dict[str, dict]) -> str:
    rows = [[name, s.get("status", ""), _num(s.get("budget_s")), _num(s.get("used_s"))] for name, s in sections.items()]
    return _table(["section", "status", "budget s", "used s"], rows, right={2, 3})


def _memory_kind(rows: list[dict]) -> str:
    kinds = {r.get("mem_kind") for r in rows} - {None}
    names = {"cuda_peak_allocated": "CUDA peak allocated", "cpu_peak_rss": "process peak RSS (CPU: not per row)"}
    return " / ".join(names.get(k, k) for k in sorted(kinds)) or "peak memory"


def render(report: dict) -> str:
    """The whole gpu_report.md: machine line, then one heading and table per goal."""
    meta = report["meta"]
    tests = report.get("tests") or []
    flash = next((t for t in tests if t["name"].endswith("test_flash_kernel_is_selected_at_bf16")), None)
    failed = [t for t in tests if t["outcome"] in ("failed", "error")]
    parts = [
        f"**{meta.get('gpu', '?')}** ({_num(meta.get('gpu_memory_mb'))} MiB), torch {meta.get('torch', '?')} "
        f"(CUDA {meta.get('cuda', '?')}), timm {meta.get('timm', '?')}, Lightning {meta.get('lightning', '?')}; "
        f"{meta.get('date', '?')}; `{meta.get('command', 'medconv bench gpu')}` took {_num(meta.get('wall_s'))} s"
        + (f" of a {_num(meta['budget_s'])} s budget." if meta.get("budget_s") else "."),
        "",
        "### CUDA tests",
        "",
        f"Flash kernel selected at bf16: **{flash['outcome'] if flash else 'not run'}**; "
        f"{len(tests) - len(failed)} of {len(tests)} tests without failure.",
        "",
        outcomes_table(tests),
        "",
        "### Peak training memory, hierarchical ViTs: SDPA vs math",
        "",
        f"{_memory_kind(report.get('memory') or [])}, bf16-mixed training with gradient checkpointing; growth = peak "
        "at the larger size over the smaller (4x the pixels).",
        "",
        memory_table(report.get("memory") or []),
        "",
        "### Training overhead: medconv vs the bare timm loop",
        "",
        overhead_table(report.get("overhead")),
        "",
        "### Slide inference: loader vs model (default workers)",
        "",
        infer_table(report.get("infer")),
        "",
        "### Largest training batch",
        "",
        max_batch_table(report.get("max_batch") or []),
        "",
        "### Sections",
        "",
        sections_table(report.get("sections") or {}),
        "",
    ]
    return "\n".join(parts)
