"""medconv's top-level packages import each other along a DAG that points down the data flow (DESIGN.md: io <- tiling
<- data <- modality datamodules <- models <- tasks <- slides <- inference / embedding <- ablation <- cli), no module
imports another package's private name, and modules stay small.

The graph is computed from the source with `ast`: every `import` / `from ... import` statement of every module under
medconv/, function-local ones included, mapped to the top-level package or module it reaches (`medconv.slides`,
`medconv.errors`; `from medconv import keys` reaches `medconv.keys`). Names resolved from strings at run time
(`importlib.import_module` in the FutureWarning shims that keep old config class paths working, the `medconv`
command's subcommand table) are not imports of the code and are not counted.

Run as a script to print the package-level import pairs: `python tests/packaging/test_package_graph.py [REPO]`.
"""

from __future__ import annotations

import ast
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 400  # a module past this holds two concepts (DESIGN.md: split at ~300)
MAX_MEDIAN_LINES = 150  # the median module is ~110 lines; this catches a drift towards large files
MAX_CYCLES = 200  # enough to show what is wrong; the count of the rest is given

#: Layers, lowest first: a package may import its own layer's packages and lower ones. `demo` generates data and
#: sits with the commands: production code never imports it (datamodules get it injected as a `demo` object).
LAYERS = (
    ("medconv", "medconv.errors", "medconv.keys", "medconv.commands"),
    ("medconv.io", "medconv.run_dirs", "medconv.precision", "medconv.stats"),
    ("medconv.tiling",),
    ("medconv.data",),
    ("medconv.mammo", "medconv.wsi", "medconv.mil"),
    ("medconv.models",),
    ("medconv.ssl",),
    ("medconv.tasks",),
    ("medconv.callbacks", "medconv.runs"),
    ("medconv.slides",),
    ("medconv.inference", "medconv.embedding", "medconv.export"),
    ("medconv.ablation", "medconv.demo"),
    ("medconv.bench",),
    ("medconv.cli", "medconv.lightning_cli"),
)
#: Upward edges that are still to be removed, each with its reason. Shrink-only: the test fails when an edge listed
#: here is gone, so the entry is removed with it.
UPWARD_PENDING: dict[tuple[str, str], str] = {}
#: Generated data is for demos, tests and benchmarks: configs inject it (`class_path`), production code never imports it.
DEMO_IMPORTERS = ("medconv.bench", "medconv.cli")


@dataclass
class PackageGraph:
    """edges[(a, b)]: where package a imports package b ("path:line"); private: (where, module, names)."""

    edges: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    private: list[tuple[str, str, list[str]]] = field(default_factory=list)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level(root: Path, module: str) -> str:
    """`medconv.slides.predict` -> `medconv.slides`; `medconv.__version__` (not a module) -> `medconv`."""
    parts = module.split(".")
    if len(parts) < 2:
        return "medconv"
    base = root / "medconv" / parts[1]
    return f"medconv.{parts[1]}" if base.is_dir() or base.with_suffix(".py").is_file() else "medconv"


def imported_modules(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for one import statement; relative imports resolved against `module`."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [alias.name for alias in node.names]
    if target == "medconv":  # `from medconv import keys`: each name is a module or a root attribute
        return [(f"medconv.{name}", []) for name in names]
    return [(target, names)]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def package_graph(root: Path = REPO) -> PackageGraph:
    graph = PackageGraph()
    for path in sorted((root / "medconv").rglob("*.py")):
        module = module_name(root, path)
        where_file = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target, names in imported_modules(node, module, path.name == "__init__.py"):
                if target != "medconv" and not target.startswith("medconv."):
                    continue
                a, b = top_level(root, module), top_level(root, target)
                if a == b:
                    continue
                where = f"{where_file}:{node.lineno}"
                graph.edges[(a, b)].append(where)
                private = [n for n in names if is_private(n)] + [p for p in target.split(".") if is_private(p)]
                if private:
                    graph.private.append((where, target, private))
    return graph


def cycles(edges: dict[tuple[str, str], list[str]]) -> tuple[list[list[str]], bool]:
    """Every elementary cycle (each once, starting at its smallest node), at most MAX_CYCLES; (cycles, truncated)."""
    nodes = sorted({n for edge in edges for n in edge})
    successors: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        successors[a].append(b)
    found: list[list[str]] = []
    for start in nodes:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in successors[node]:
                if nxt == start:
                    found.append(path)
                    if len(found) >= MAX_CYCLES:
                        return found, True
                elif nxt > start and nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    return sorted(found, key=lambda c: (len(c), c)), False


def short(name: str) -> str:
    return name.removeprefix("medconv.")


def describe_cycle(cycle: list[str], edges: dict[tuple[str, str], list[str]]) -> str:
    ring = [*cycle, cycle[0]]
    steps = []
    for a, b in zip(ring, ring[1:], strict=False):
        sites = edges[(a, b)]
        steps.append(f"    {short(a)} -> {short(b)}: {', '.join(sites[:3])}{' ...' if len(sites) > 3 else ''}")
    return " -> ".join(short(n) for n in ring) + "\n" + "\n".join(steps)


def module_sizes(root: Path = REPO) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
            for p in sorted((root / "medconv").rglob("*.py"))}


def test_package_imports_form_a_dag() -> None:
    graph = package_graph()
    found, truncated = cycles(graph.edges)
    report = "\n".join(describe_cycle(c, graph.edges) for c in found)
    more = f"\n(stopped after {MAX_CYCLES} cycles)" if truncated else ""
    assert not found, f"{len(found)} import cycles between medconv's packages (break each edge that points up):\n{report}{more}"


def layer_of(package: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if package in layer:
            return rank
    raise AssertionError(f"{package} is in no layer of LAYERS; add it where it belongs in the data flow")


def upward_edges(edges: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], list[str]]:
    return {(a, b): sites for (a, b), sites in edges.items() if layer_of(a) < layer_of(b)}


def test_no_package_imports_a_higher_layer() -> None:
    upward = upward_edges(package_graph().edges)
    new = {edge: sites for edge, sites in upward.items() if edge not in UPWARD_PENDING}
    lines = [f"  {short(a)} -> {short(b)}: {', '.join(sites[:3])}" for (a, b), sites in sorted(new.items())]
    assert not new, "imports of a higher layer (see LAYERS; move the shared code down instead):\n" + "\n".join(lines)
    gone = sorted(edge for edge in UPWARD_PENDING if edge not in upward)
    assert not gone, f"these upward imports are gone: remove them from UPWARD_PENDING: {gone}"


def test_only_the_tools_import_demo_generation() -> None:
    importers = sorted({a for (a, b) in package_graph().edges if b == "medconv.demo" and a not in (*DEMO_IMPORTERS, b)})
    assert not importers, f"{importers} import medconv.demo; inject demo data through a `demo` options object instead"


def test_no_private_names_imported_across_packages() -> None:
    private = package_graph().private
    lines = [f"  {where}: {', '.join(names)} from {target}" for where, target, names in private]
    assert not private, "private names imported from another package (give them public names):\n" + "\n".join(lines)


def test_modules_stay_small() -> None:
    sizes = module_sizes()
    large = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not large, f"modules over {MAX_LINES} lines (split them by concept): {large}"
    median = statistics.median(sizes.values())
    assert median <= MAX_MEDIAN_LINES, f"median module size {median} lines (was ~110); split the large ones"


def test_the_graph_code_sees_cycles_local_imports_and_private_names(tmp_path: Path) -> None:
    """The checks above can fail: a hand-made package with a two-package cycle through a function-local import,
    a three-package cycle, `from medconv import x`, a relative import and a private name."""
    files = {
        "medconv/__init__.py": "",
        "medconv/errors.py": "",
        "medconv/low/__init__.py": "from medconv import errors\n",
        "medconv/low/a.py": "def f():\n    from medconv.high.b import _helper\n",
        "medconv/high/__init__.py": "",
        "medconv/high/b.py": "from ..low import a\nfrom . import c\n",
        "medconv/high/c.py": "",
        "medconv/x/__init__.py": "import medconv.y.m\n",
        "medconv/y/m.py": "from medconv import z\n",
        "medconv/z.py": "import medconv.x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = package_graph(tmp_path)
    assert set(graph.edges) == {("medconv.low", "medconv.errors"), ("medconv.low", "medconv.high"),
                                ("medconv.high", "medconv.low"), ("medconv.x", "medconv.y"), ("medconv.y", "medconv.z"),
                                ("medconv.z", "medconv.x")}
    found, _ = cycles(graph.edges)
    assert found == [["medconv.high", "medconv.low"], ["medconv.x", "medconv.y", "medconv.z"]]
    assert graph.private == [("medconv/low/a.py:2", "medconv.high.b", ["_helper"])]
    assert upward_edges({("medconv.io", "medconv.slides"): ["x"], ("medconv.slides", "medconv.io"): ["y"]}) == \
        {("medconv.io", "medconv.slides"): ["x"]}


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else REPO
    graph = package_graph(root)
    for (a, b), sites in sorted(graph.edges.items()):
        mark = "  <-> CYCLE" if (b, a) in graph.edges else ""
        print(f"{short(a)} -> {short(b)}{mark}  ({len(sites)}: {', '.join(sites[:2])}{' ...' if len(sites) > 2 else ''})")
    found, truncated = cycles(graph.edges)
    print(f"\n{len(found)}{'+' if truncated else ''} cycles")
    for cycle in found:
        print(describe_cycle(cycle, graph.edges))
    print(f"\nprivate names across packages: {graph.private or 'none'}")
    print("upward edges (see LAYERS):")
    for (a, b), sites in sorted(upward_edges(graph.edges).items()):
        print(f"  {short(a)} -> {short(b)}: {', '.join(sites[:2])}  [{UPWARD_PENDING.get((a, b), 'NEW')}]")
    sizes = module_sizes(root)
    print(f"{len(sizes)} modules, median {statistics.median(sizes.values())} lines, largest {max(sizes.values())} "
          f"({max(sizes, key=sizes.get)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
