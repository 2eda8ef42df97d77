"""The README's Reliability table names real tests: every ``file::name`` it cites exists."""

import ast
import fnmatch
import re

from conftest import ROOT


def functions_in(path):
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_reliability_table_cites_existing_tests():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 15
    for row in rows:
        cited = re.findall(r"`(?:(test_\w+\.py))?::([\w*]+)`", row.rsplit("|", 2)[1])
        assert cited, f"row cites no test: {row[:80]}"
        current = None
        for file, pattern in cited:
            current = file or current  # `::name` continues the file named before it
            names = functions_in(ROOT / "tests" / current)
            assert fnmatch.filter(names, pattern), f"{current}::{pattern} is not a test"
