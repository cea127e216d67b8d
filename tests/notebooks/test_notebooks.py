"""Every notebook in notebooks/ runs top to bottom on tiny generated data, and is stored without outputs.

A notebook reads its input folder from an environment variable; NOTEBOOKS names, per notebook, the fixture
(tests/notebooks/conftest.py) that makes that folder and the variable. A notebook without an entry fails: a new
notebook needs data to be tested on. The kernel is this interpreter's (a kernelspec written to a temp folder at
test time), so the notebook imports the medconv being tested whatever kernels the machine has installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
#: notebook stem -> (fixture making its input folder, environment variable the notebook reads it from); a fixture
#: may also return a dict of environment variables
NOTEBOOKS = {
    "tiling_qc": ("tiles_dir", "MEDCONV_TILES_DIR"),
    "slide_heatmaps": ("infer_dir", "MEDCONV_INFER_DIR"),
    "ablation_analysis": ("ablation_records_dir", "MEDCONV_ABLATION_DIR"),
}
KERNEL = "medconv-tests"
TIMEOUT_S = 300  # per cell; generous, a shared 2-core machine is slow to start kernels

pytestmark = pytest.mark.usefixtures("one_thread")


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory) -> Path:
    """A jupyter data folder holding a kernelspec for this interpreter (sys.executable -m ipykernel_launcher)."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, display_name="medconv tests", prefix=str(prefix))
    return prefix / "share" / "jupyter"


def test_notebooks_are_found():
    assert {"tiling_qc", "slide_heatmaps"} <= {p.stem for p in _notebooks()}


@pytest.mark.integration
@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_on_tiny_data(path: Path, kernel_path: Path, request: pytest.FixtureRequest,
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    if path.stem not in NOTEBOOKS:
        pytest.fail(f"{path.name} has no test data: add it to NOTEBOOKS in {Path(__file__).name} with a fixture in conftest.py")
    fixture, variable = NOTEBOOKS[path.stem]
    data = request.getfixturevalue(fixture)
    env = {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {variable: str(data)}
    for key, value in {**env, "JUPYTER_PATH": str(kernel_path), "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, so figures become outputs
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors  # execute() raises on the first error; this guards cells marked raises-exception
    shown = sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for c in nb.cells
                for o in c.get("outputs", []))
    assert shown >= 1  # the figures were drawn


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, (f"{path.name}: cells {dirty} hold outputs or execution counts; clear them "
                       f"(`jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)}`)")
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
