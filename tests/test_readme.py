"""The README and the pages around it stay true to the repository.

- The Reliability table names real tests: every ``file::name`` it cites exists.
- Every relative link and image in the README, the course map and the scripts' and benchmark pages
  points at an existing file, and an ``#anchor`` into a markdown page at one of its headings.
- The README opens with the two commands, ``make course`` and ``make test``, and nothing else.
"""

import ast
import fnmatch
import re

import pytest

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


# Pages whose relative links must resolve: the README, the course map and the benchmark pages.
LINKED_PAGES = ["README.md", "lessons/README.md", "scripts/README.md", "scripts/benchmarks/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def without_fenced_code(text):
    return re.sub(r"^\s*```.*?^\s*```[^\n]*$", "", text, flags=re.S | re.M)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_anchors(path):
    """The anchors of a markdown file's headings (code blocks skipped)."""
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_fenced_code(path.read_text()), re.M)}


def relative_links(path):
    """Every link and image target in ``path`` that is not a URL (code blocks skipped)."""
    targets = LINK.findall(without_fenced_code(path.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def test_link_checker_sees_links_images_and_anchors():
    text = "[a](x.md) ![b](fig/y.png) [`c`](../z/#top) [d](https://e.org/f) `g` [h](#sec-2)"
    assert LINK.findall(text) == ["x.md", "fig/y.png", "../z/#top", "https://e.org/f", "#sec-2"]
    assert slug("On several processes, GPUs or machines") == "on-several-processes-gpus-or-machines"
    assert slug("How it maps to `ddpm_lib`") == "how-it-maps-to-ddpm_lib"


@pytest.mark.parametrize("page", LINKED_PAGES)
def test_relative_links_resolve(page):
    source = ROOT / page
    links = relative_links(source)
    assert links, f"{page} has no relative links"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (source.parent / target).resolve() if target else source
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_readme_opens_with_the_two_commands():
    """The first thing under the title is one fenced block holding exactly `make course` and `make test`."""
    readme = (ROOT / "README.md").read_text()
    match = re.match(r"# [^\n]+\n\s*```[a-z]*\n(.*?)\n```", readme, re.S)
    assert match, "README.md must open with its title and then the fenced block of the two commands"
    commands = [line.split("#", 1)[0].strip() for line in match.group(1).splitlines()]
    assert commands == ["make course", "make test"], commands
