"""Every notebook: committed without outputs, opens with a papermill parameters cell, and runs
top to bottom in quick mode (papermill, fresh kernel). Executed copies go to build/notebooks/."""

import json
from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUILD = ROOT / "build" / "notebooks"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_parameterised(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell must be tagged parameters"
    assert "QUICK" in "".join(code[0]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path):
    papermill = pytest.importorskip("papermill")
    BUILD.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(path), str(BUILD / path.name), parameters={"QUICK": True},
                               kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False,
                               request_save_on_cell_execute=False)
