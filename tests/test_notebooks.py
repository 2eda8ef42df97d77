"""Every notebook: committed without outputs, opens with a papermill parameters cell, and runs
top to bottom in quick mode (papermill, fresh kernel). Executed copies go to build/notebooks/.

A notebook with implement-it-yourself cells runs twice: as a learner first sees it (stubs: each
check reports "not written yet" and the notebook goes on with the library's version), and with
``SOLUTIONS=True`` (each check runs the worked solution in notebooks/solutions/ and must pass)."""

import json
import re

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUILD = ROOT / "build" / "notebooks"
CHECK_CALL = re.compile(r"^(\w+) = check\.(\w+)\(my_(\w+)\)\.function", re.M)


def code_of(path):
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


def checks_in(path):
    """The checker names a notebook's implement-it-yourself cells call, in order."""
    return [name for name, checker, mine in CHECK_CALL.findall(code_of(path))]


WITH_CHECKS = [p for p in NOTEBOOKS if checks_in(p)]


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


def test_units_01_to_08_and_10_have_implement_it_yourself_cells_and_every_unit_a_prediction():
    units = {p.name[:2] for p in WITH_CHECKS}
    assert units == {"01", "02", "03", "04", "05", "06", "07", "08", "10"}
    for path in WITH_CHECKS:
        assert 2 <= len(checks_in(path)) <= 4, path.name
    for path in NOTEBOOKS:
        assert "check.score_prediction(" in code_of(path), f"{path.name} has no predict-then-run cell"


@pytest.mark.parametrize("path", WITH_CHECKS, ids=lambda p: p.name)
def test_stubs_name_their_checker_and_raise_and_solutions_live_outside(path):
    """Each cell's stub is ``my_NAME`` checked by ``check.NAME`` and still raises; the notebook's
    parameters offer SOLUTIONS, which plugs in solutions/<notebook>.py, defining every NAME."""
    import ast

    from ddpm_lib import check

    code = code_of(path)
    for name, checker, mine in CHECK_CALL.findall(code):
        assert name == checker == mine and checker in check.CHECKS, (name, checker, mine)
        stub = next(node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.FunctionDef)
                    and node.name == f"my_{name}")
        raised = [n.exc for n in ast.walk(stub) if isinstance(n, ast.Raise)]
        assert any(getattr(getattr(e, "func", None), "id", None) == "NotImplementedError" for e in raised), name
        assert f"def {name}(" not in code, f"{path.name} defines {name} itself: the solution would be in the notebook"
    nb = json.loads(path.read_text())
    parameters = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert re.search(r"^SOLUTIONS = False", parameters, re.M), "the parameters cell must offer SOLUTIONS"
    solutions = ROOT / "notebooks" / "solutions" / f"{path.stem}.py"
    assert f'check.use_solutions("solutions/{path.stem}.py")' in code and solutions.exists()
    for name in checks_in(path):
        assert re.search(rf"^def {name}\(", solutions.read_text(), re.M), f"{solutions.name} lacks {name}"


def run_notebook(path, **parameters):
    """Execute ``path`` with papermill into build/notebooks/ and return the printed output, cell by cell."""
    papermill = pytest.importorskip("papermill")
    BUILD.mkdir(parents=True, exist_ok=True)
    suffix = "".join(f"-{k.lower()}" for k, v in parameters.items() if v is True and k != "QUICK")
    executed = papermill.execute_notebook(str(path), str(BUILD / f"{path.stem}{suffix}.ipynb"), parameters=parameters,
                                          kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False,
                                          request_save_on_cell_execute=False)
    return "\n".join(out.get("text", "") for cell in executed["cells"] for out in cell.get("outputs", [])
                     if out.get("output_type") == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path):
    """As a learner first sees it: every stub reports "not written yet" and the notebook completes."""
    printed = run_notebook(path, QUICK=True)
    for name in checks_in(path):
        assert f"FAIL {name}: not written yet" in printed, name


@pytest.mark.parametrize("path", WITH_CHECKS, ids=lambda p: p.name)
def test_notebook_runs_with_the_worked_solutions(path):
    """SOLUTIONS=True: every check runs the worked solution and passes (a failing one raises)."""
    printed = run_notebook(path, QUICK=True, SOLUTIONS=True)
    for name in checks_in(path):
        assert f"PASS {name}:" in printed, name
    assert "FAIL " not in printed


def test_run_notebooks_script_renders_html_and_index():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--only", "00", "02", "--solutions"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "00_welcome.ipynb ok in" in proc.stdout and "02_noise_schedules.ipynb ok in" in proc.stdout
    solved = (ROOT / "build" / "notebooks" / "02_noise_schedules.ipynb").read_text()
    assert "PASS linear_alpha_bar" in solved and "PASS cosine_alpha_bar" in solved  # --solutions reached 02 only
    index = (ROOT / "build" / "html" / "index.html").read_text()
    assert 'href="00_welcome.html"' in index
    assert "<html" in (ROOT / "build" / "html" / "00_welcome.html").read_text().lower()
    bad = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--only", "99"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no notebooks matched" in bad.stderr
