"""The sample explorer, driven from Python: widgets set, Generate pressed, output judged."""

import html
import re
import shutil
from pathlib import Path

import pytest
import torch

from ddpm_lib import explorer as explorer_module
from ddpm_lib.config import MAX_SEED
from ddpm_lib.data import load_digits
from ddpm_lib.diffusion import ddim_timesteps
from ddpm_lib.explorer import Explorer, find_runs, safe_file_name
from ddpm_lib.metrics import load_or_train_classifier, predict


@pytest.fixture(scope="module")
def explorer(trained_run):
    e = Explorer(trained_run)
    e.count.value = 8
    e.class_.value = 0  # a class chosen, so that each test can run on its own
    return e


def _decode(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png))


def test_generate_draws_the_requested_class(explorer, trained_run):
    assert "loaded" in explorer.message.value and explorer.weights.value == "ema"
    classifier, _ = load_or_train_classifier(load_digits(8), trained_run / "classifier.pt")
    seen = []
    for name in ("three", "seven"):
        explorer.class_.value = explorer.class_names.index(name)
        before = explorer.grid.value
        explorer.generate_button.click()  # what the browser's click does
        assert "error" not in explorer.message.value and explorer.grid.value != before
        images = explorer.result["images"]
        assert images.shape == (8, 1, 8, 8) and _decode(explorer.grid.value).size[0] > 8 * 8
        hits = (predict(classifier, images) == explorer.class_.value).float().mean().item()
        assert hits >= 0.75, (name, hits)
        seen.append(explorer.grid.value)
    assert seen[0] != seen[1]


def test_prompt_selects_the_class_and_bad_prompt_is_a_message(explorer):
    explorer.prompt.value = "digit four"
    assert explorer.class_names[explorer.class_.value] == "four"
    explorer.prompt.value = "a cat"
    assert "names none" in explorer.message.value and explorer.class_names[explorer.class_.value] == "four"


def test_trajectory_scrubber_shows_xt_and_predicted_x0(explorer):
    explorer.generate_button.click()
    steps = explorer.result["steps"]
    assert steps == ddim_timesteps(200, 20) and explorer.frame.max == len(steps) - 1  # 199, 189, ..., 9
    end = explorer.trajectory.value
    explorer.frame.value = 0
    assert explorer.frame_label.value == "t = 199" and explorer.trajectory.value != end
    explorer.which.value = 3
    assert explorer.which.max == 7


def test_ddpm_sampler_and_progress(explorer):
    explorer.sampler.value = "ddpm"
    assert explorer.steps.disabled
    explorer.count.value = 2
    explorer.generate_button.click()
    assert explorer.progress.value == explorer.progress.max == 200
    assert "DDPM 200 steps" in explorer.message.value
    explorer.sampler.value, explorer.count.value = "ddim", 8


@pytest.mark.parametrize("widget, value, words", [
    ("seed", -1, f"seed must be a whole number from 0 to {MAX_SEED}; got -1"),
    ("seed", MAX_SEED + 1, f"seed must be a whole number from 0 to {MAX_SEED}; got {MAX_SEED + 1}"),
    ("seed", 2**80, f"seed must be a whole number from 0 to {MAX_SEED}"),  # IntText takes any int
    ("guidance", float("nan"), "guidance scale must be a number from 0 to 10, got nan"),
    ("eta", float("nan"), "DDIM eta must be a number from 0 to 1, got nan"),
])
def test_invalid_input_is_a_message_not_an_exception(explorer, widget, value, words):
    good, old = explorer.grid.value, getattr(explorer, widget).value
    setattr(getattr(explorer, widget), "value", value)
    try:
        explorer.generate_button.click()  # must not raise
        assert words in explorer.status and "\n" not in explorer.status and explorer.grid.value == good
    finally:
        setattr(getattr(explorer, widget), "value", old)


@pytest.mark.parametrize("widget, value, words", [
    ("steps", 500, "DDIM steps must be a whole number from 1 to 200, got 500"),  # the run has 200 steps
    ("count", 500, "number of images must be a whole number from 1 to 64, got 500"),
])
def test_slider_ranges_widened_from_code_are_still_checked(explorer, widget, value, words):
    slider = getattr(explorer, widget)
    good, old, old_max = explorer.grid.value, slider.value, slider.max
    slider.max, slider.value = 10_000, value
    try:
        explorer.generate_button.click()
        assert words in explorer.status and explorer.grid.value == good
    finally:
        slider.value, slider.max = old, old_max


def test_out_of_range_sliders_are_clamped(explorer):
    explorer.steps.value = 10_000
    explorer.count.value = 0
    assert explorer.steps.value == 200 and explorer.count.value == 1
    explorer.steps.value, explorer.count.value = 20, 8


def test_save_writes_the_grid(explorer):
    explorer.generate_button.click()
    explorer.save_button.click()
    path = explorer.last_saved
    assert path.parent.name == "explorer" and path.read_bytes() == explorer.grid.value


def test_weights_picker_switches_to_raw_weights(explorer, trained_run):
    explorer.weights.value = "snapshot-raw"
    assert "snapshot-raw" in explorer.message.value
    explorer.weights.value = "ema"


def test_no_runs_is_a_message(tmp_path):
    e = Explorer(tmp_path)
    assert "no trained run" in e.message.value and e.run.options == ()
    e.generate_button.click()
    assert "no run loaded" in e.message.value


def test_find_runs(trained_run, untrained_run):
    assert find_runs(trained_run) == [trained_run]
    assert find_runs(trained_run.parent) == [trained_run]  # a folder of runs
    assert find_runs(trained_run / "samples") == []


# Class names come from a checkpoint, so from anyone: markup, paths, NUL, dot files.
def _crafted_names(root: Path) -> list[str]:
    return ["<img src=x onerror=alert(1)>", "../../evil", str(root / "abs" / "evil"), "a/b\\c\x00d", "..",
            ".hidden", "pájaro", "猫", "eight", "nine"]


@pytest.fixture(scope="module")
def crafted(trained_run, tmp_path_factory):
    """An explorer over a copy of the trained run whose ``ema.pt`` has hostile class names."""
    root = tmp_path_factory.mktemp("crafted")
    run = root / "run"
    shutil.copytree(trained_run, run)
    ckpt = torch.load(run / "ema.pt", map_location="cpu", weights_only=True)
    ckpt["class_names"] = _crafted_names(root)
    torch.save(ckpt, run / "ema.pt")
    e = Explorer(run)
    e.count.value = 2
    return e


def _shown_text(message: str) -> str:
    """The text the message line shows; fails if anything but its one <span> is markup."""
    found = re.fullmatch(r"<span style='color:#[0-9a-f]{6}'>([^<>]*)</span>", message)
    assert found, message
    return html.unescape(found.group(1))


def test_class_names_and_prompts_are_shown_as_text_not_markup(crafted):
    crafted.prompt.value = "<img src=x onerror=alert(1)>"  # selects class 0, named the same
    assert crafted.class_.value == 0 and _shown_text(crafted.message.value) == crafted.status
    assert "-> class <img src=x onerror=alert(1)>" in crafted.status
    crafted.prompt.value = "<script>alert(1)</script>"  # names no class: the error lists them all
    assert "names none" in crafted.status and "<script>" in crafted.status
    assert _shown_text(crafted.message.value) == crafted.status
    crafted.generate_button.click()
    assert "2 x <img src=x onerror=alert(1)>" in crafted.status
    assert _shown_text(crafted.message.value) == crafted.status


def test_prompt_selects_a_non_ascii_class(crafted):
    crafted.prompt.value = "un PÁJARO"
    assert crafted.class_.value == 6
    crafted.prompt.value = "一只猫"
    assert crafted.class_.value == 7


@pytest.mark.parametrize("index", range(6))
def test_save_stays_inside_the_explorer_folder(crafted, index):
    root, folder = Path(crafted.run.value).parent, (Path(crafted.run.value) / "explorer").resolve()
    before = set(root.rglob("*"))
    crafted.class_.value = index
    crafted.generate_button.click()
    crafted.save_button.click()
    path = crafted.last_saved
    assert crafted.status == f"saved {path}", crafted.status
    assert path.resolve().parent == folder and not path.name.startswith(".")
    assert path.read_bytes() == crafted.grid.value
    assert {p.resolve() for p in set(root.rglob("*")) - before} <= {folder, path.resolve()}


def test_save_refuses_a_name_that_escapes_even_if_not_made_safe(crafted, monkeypatch):
    monkeypatch.setattr(explorer_module, "safe_file_name", lambda text: text)
    crafted.class_.value = 1  # "../../evil"
    crafted.generate_button.click()
    crafted.last_saved = None
    crafted.save_button.click()
    assert "refusing to save" in crafted.status and crafted.last_saved is None


@pytest.mark.parametrize("name, safe", [
    ("../../evil", "_.._evil"),
    ("/abs/path", "_abs_path"),
    ("a\\b\x00c d", "a_b_c_d"),
    ("..", "class"),
    (".hidden", "hidden"),
    ("lined_paper-2.v1", "lined_paper-2.v1"),
    ("pa\u0301jaro", "pájaro"),  # letters of any script stay, accents composed
    ("猫", "猫"),
    ("x" * 300, "x" * 48),  # a file name has at most 255 bytes
])
def test_safe_file_name(name, safe):
    assert safe_file_name(name) == safe
