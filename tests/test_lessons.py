"""The lesson pages agree with their notebooks and with the code.

- One exercise list per unit: the notebook's last cell and the lesson's ``## Exercises`` hold the
  same numbered items, each tagged ``**[easy]**``, ``**[medium]**`` or ``**[hard]**``; the lesson's
  ``## Solutions`` works each one, and no solution sits in the notebook.
- No drifting defaults: a sentence in a lesson, a notebook's markdown or the README that calls a
  configuration value a default (or "the run's") states the value ``ddpm_lib/configs/base.yaml`` (or the preset the
  sentence names) really has. A default is written ``section.key = value`` (or "``section.key``, value
  by default"); ``section.key=value`` without spaces is an override, as ``--set`` takes it.
"""

import json
import re

import pytest

from conftest import ROOT
from ddpm_lib.config import load_config

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PRESETS = sorted(p.stem for p in (ROOT / "ddpm_lib" / "configs").glob("*.yaml"))
TAG = re.compile(r"^\*\*\[(easy|medium|hard)\]\*\* ")


def markdown_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]


def without_code_blocks(text):
    return re.sub(r"^\s*```.*?^\s*```", " ", text, flags=re.S | re.M)


def section(text, heading):
    """The body of ``## heading`` up to the next heading of level 1 or 2, or None."""
    match = re.search(rf"^##\s+{heading}\s*$(.*?)(?=^#{{1,2}}\s|\Z)", text, re.S | re.M)
    return match.group(1) if match else None


def numbered_items(text):
    """The top-level items of a numbered list, whitespace collapsed (code blocks removed)."""
    items = re.split(r"^\d+\.\s+", without_code_blocks(text), flags=re.M)[1:]
    return [" ".join(item.split()) for item in items]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_exercise_list_per_unit_with_worked_solutions_in_the_lesson(path):
    lesson = (ROOT / "lessons" / f"{path.stem}.md").read_text()
    last = markdown_cells(path)[-1]
    in_notebook, in_lesson = numbered_items(section(last, "Exercises") or ""), numbered_items(section(lesson, "Exercises") or "")
    assert 3 <= len(in_notebook) <= 8, f"{path.name}: {len(in_notebook)} exercises"
    assert in_notebook == in_lesson, f"{path.stem}: the notebook's and the lesson's exercise lists differ"
    untagged = [item[:60] for item in in_notebook if not TAG.match(item)]
    assert not untagged, f"{path.stem}: exercises without a difficulty tag: {untagged}"
    solutions = section(lesson, "Solutions")
    assert solutions is not None and len(numbered_items(solutions)) == len(in_lesson), \
        f"lessons/{path.stem}.md needs one worked solution per exercise under ## Solutions"
    assert lesson.index("## Exercises") < lesson.index("## Solutions")
    assert len(re.findall(r"^##\s+(Exercises|Solutions)\s*$", lesson, re.M)) == 2
    assert not any(section(cell, "Solutions") is not None for cell in markdown_cells(path)), "solutions sit in the notebook"


# ------------------------------------------------------------------ stated defaults

ALIASES = {  # how the prose names a key besides section.key
    "sample.eta": [r"\$\\eta\$", r"\beta\b", "η"],
    "diffusion.p_uncond": [r"\$p_\\text\{uncond\}\$", r"\bp_uncond\b"],
    "sample.guidance_scale": [r"guidance scale(?: \$s\$)?", r"\$s\$"],
    "train.ema_decay": [r"\bema_decay\b", r"EMA decay"],
    "diffusion.timesteps": [r"\$T\$"],
}
VALUE = r"(-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?|true|false|linear|cosine|ddpm|ddim|constant)\b"
BETWEEN = r"[`$\s]*(?:=|:|,|\(|is|of|defaults? to|defaults? is)?[`$\s]*(?:defaults? |is |=\s*)?[`$\s]*"


def config_values(preset):
    cfg = load_config(preset).to_dict()
    return {f"{section}.{key}": value for section, keys in cfg.items() if isinstance(keys, dict)
            for key, value in keys.items()}


BASE = config_values("base")


def key_patterns():
    for key in BASE:
        names = [re.escape(key)] + ALIASES.get(key, [])
        yield key, re.compile("|".join(f"(?:{n})" for n in names))


def same(stated, actual):
    if isinstance(actual, bool) or actual is None or isinstance(actual, str):
        return stated == str(actual).lower()
    try:
        return float(stated.replace(",", "")) == pytest.approx(float(actual), rel=1e-9)
    except ValueError:
        return False


def wrong_defaults(text):
    """(key, stated, actual, sentence) for each sentence stating a default that the config does not have."""
    out = []
    for sentence in re.split(r"(?<=[.;!?])\s+|\n\s*\n|\n(?=\|)", without_code_blocks(text)):  # table rows apart
        if not re.search(r"\bdefaults?\b|\bthe run's\b", sentence, re.I) or re.search(r"QUICK|--set", sentence):
            continue
        preset = next((p for p in PRESETS if re.search(rf"`{p}`|\b{p} preset|runs/{p}\b", sentence)), "base")
        values = BASE if preset == "base" else config_values(preset)
        for key, pattern in key_patterns():
            for match in pattern.finditer(sentence):
                if sentence[match.end():match.end() + 1] == "=":  # `key=value`: an override, as --set writes it
                    continue
                stated = re.match(BETWEEN + VALUE, sentence[match.end():match.end() + 40])
                if stated and not same(stated.group(1), values[key]):
                    out.append((key, stated.group(1), values[key], " ".join(sentence.split())[:160]))
    return out


def test_the_scanner_catches_drifted_defaults_and_passes_true_ones():
    assert wrong_defaults("By default the run's $\\eta$ is 0, so DDIM is deterministic.")[0][:3] == ("sample.eta", "0", 0.5)
    assert wrong_defaults("The default `sample.eta = 1.0`.")[0][:2] == ("sample.eta", "1.0")
    old_lesson_08 = ("`runs/digits` (16 px, $T = 1000$, 1,400 steps; sampled with DDIM and the run's $\\eta = 0$, "
                     "guidance 2, but only 5 images)")
    assert [w[:3] for w in wrong_defaults(old_lesson_08)] == [("sample.eta", "0", 0.5)]
    assert wrong_defaults("`diffusion.schedule` defaults to linear.")[0][:2] == ("diffusion.schedule", "linear")
    assert wrong_defaults("(`diffusion.p_uncond`, 0.2 by default)")
    assert not wrong_defaults("By default $\\eta$ = 0.5. With `--set sample.eta=0` it is deterministic.")
    assert not wrong_defaults("Train once with `train.ema_sync_every=0` and once with the default.")
    assert not wrong_defaults("Here $p_\\text{uncond}$ (`diffusion.p_uncond`, 0.1 by default) is the dropout.")
    assert not wrong_defaults("The default guidance scale $s$ = 1.25 is a compromise; `train.ema_decay = 0.999`, the default.")
    assert wrong_defaults("The default guidance scale $s$ = 2 is a compromise.")[0][:2] == ("sample.guidance_scale", "2")


@pytest.mark.parametrize("path", sorted((ROOT / "lessons").glob("*.md")) + NOTEBOOKS + [ROOT / "README.md"],
                         ids=lambda p: p.name)
def test_stated_defaults_match_the_config(path):
    text = "\n\n".join(markdown_cells(path)) if path.suffix == ".ipynb" else path.read_text()
    assert not wrong_defaults(text), wrong_defaults(text)


def test_every_lesson_and_notebook_links_to_the_previous_and_next_unit():
    stems = [p.stem for p in NOTEBOOKS]
    for i, stem in enumerate(stems):
        lesson = (ROOT / "lessons" / f"{stem}.md").read_text()
        first_cell = markdown_cells(ROOT / "notebooks" / f"{stem}.ipynb")[0]
        for neighbour in [stems[j] for j in (i - 1, i + 1) if 0 <= j < len(stems)]:
            assert f"]({neighbour}.md)" in lesson, f"lessons/{stem}.md does not link to {neighbour}.md"
            assert f"]({neighbour}.ipynb)" in first_cell, f"notebook {stem} does not link to {neighbour}.ipynb"
        assert "](README.md)" in lesson and "](../lessons/README.md)" in first_cell, f"{stem}: no link to the course map"
