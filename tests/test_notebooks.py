"""Every notebook: committed without outputs, opens with a papermill parameters cell, and runs
top to bottom in quick mode (papermill, fresh kernel). Executed copies go to build/notebooks/."""

import json

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
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "what you will learn" in "".join(cells[0]["source"]).lower()
    assert cells[-1]["cell_type"] == "markdown" and "exercises" in "".join(cells[-1]["source"]).lower()
    lesson = ROOT / "lessons" / (path.stem + ".md")
    assert lesson.exists(), f"{path.name} has no lesson page {lesson.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path):
    papermill = pytest.importorskip("papermill")
    BUILD.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(path), str(BUILD / path.name), parameters={"QUICK": True},
                               kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False,
                               request_save_on_cell_execute=False)


def test_run_notebooks_script_renders_html_and_index():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--only", "00"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "00_welcome.ipynb ok in" in proc.stdout
    index = (ROOT / "build" / "html" / "index.html").read_text()
    assert 'href="00_welcome.html"' in index
    assert "<html" in (ROOT / "build" / "html" / "00_welcome.html").read_text().lower()
    bad = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--only", "99"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no notebooks matched" in bad.stderr
