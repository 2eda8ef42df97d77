"""Execute every course notebook headless (papermill) and render them to HTML (nbconvert).

    python scripts/run_notebooks.py                 # quick mode (QUICK=True), as CI and `make course` run them
    python scripts/run_notebooks.py --full          # the learner default (QUICK=False)
    python scripts/run_notebooks.py --only 04 07    # some notebooks, by number prefix
    python scripts/run_notebooks.py --solutions     # the Your-turn cells solved (notebooks/solutions/)

Executed copies go to build/notebooks/, never back into notebooks/ (which stay without
outputs); HTML goes to build/html/ with an index.html linking the notebooks in order.
Prints the time each notebook took and exits non-zero naming the first that failed.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"


def title_of(path: Path) -> str:
    """The first markdown heading of a notebook, or its file name."""
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def execute(path: Path, quick: bool, solutions: bool = False) -> Path:
    """Run ``path`` with papermill into build/notebooks/; ``solutions`` sets SOLUTIONS=True in the
    notebooks that have that parameter (those with Your-turn cells)."""
    import papermill

    out = BUILD / "notebooks" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    parameters = {"QUICK": quick}
    if solutions and "SOLUTIONS" in path.read_text():
        parameters["SOLUTIONS"] = True
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(NOTEBOOKS), progress_bar=False, request_save_on_cell_execute=False)
    return out


def render_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    out = BUILD / "html" / (executed.stem + ".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body)
    return out


def write_index(rows: list[tuple[Path, str, float]], quick: bool) -> Path:
    items = "\n".join(f'<li><a href="{p.name}">{html.escape(t)}</a> <small>({p.stem}, {s:.0f} s)</small></li>'
                      for p, t, s in rows)
    mode = "quick mode (QUICK=True)" if quick else "the learner default (QUICK=False)"
    index = BUILD / "html" / "index.html"
    index.write_text(f"<!doctype html><meta charset='utf-8'><title>ddpm-course notebooks</title>"
                     f"<h1>ddpm-course: executed notebooks</h1><p>Executed in {mode}; the reading for each "
                     f"is in lessons/.</p><ol>\n{items}\n</ol>\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="run with the learner default (QUICK=False)")
    parser.add_argument("--only", nargs="+", metavar="NN", help="number prefixes of the notebooks to run")
    parser.add_argument("--solutions", action="store_true",
                        help="check the worked solutions in notebooks/solutions/ instead of the stubs")
    args = parser.parse_args(argv)
    quick = not args.full
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        paths = [p for p in paths if p.name[:2] in args.only]
    if not paths:
        print("error: no notebooks matched", file=sys.stderr)
        return 2
    rows = []
    for path in paths:
        started = time.time()
        print(f"[notebooks] {path.name} ...", flush=True)
        try:
            executed = execute(path, quick, args.solutions)
        except Exception as err:  # papermill's PapermillExecutionError names the failing cell
            print(f"error: {path.name} failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}; "
                  f"the partly executed copy is build/notebooks/{path.name}", file=sys.stderr)
            return 1
        html_path = render_html(executed)
        seconds = time.time() - started
        rows.append((html_path, title_of(path), seconds))
        print(f"[notebooks] {path.name} ok in {seconds:.1f} s -> {html_path.relative_to(ROOT)}", flush=True)
    index = write_index(rows, quick)
    print(f"[notebooks] {len(rows)} notebooks in {sum(s for _, _, s in rows):.0f} s; open {index.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
