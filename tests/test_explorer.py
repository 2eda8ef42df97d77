"""The sample explorer, driven from Python: widgets set, Generate pressed, output judged."""

import pytest
import torch

from ddpm_lib.data import load_digits
from ddpm_lib.diffusion import ddim_timesteps
from ddpm_lib.explorer import Explorer, find_runs
from ddpm_lib.metrics import load_or_train_classifier, predict


@pytest.fixture(scope="module")
def explorer(trained_run):
    e = Explorer(trained_run)
    e.count.value = 8
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
    ("seed", -1, "seed must be 0 or more"),
])
def test_invalid_input_is_a_message_not_an_exception(explorer, widget, value, words):
    good = explorer.grid.value
    setattr(getattr(explorer, widget), "value", value)
    explorer.generate_button.click()  # must not raise
    assert words in explorer.message.value and explorer.grid.value == good
    setattr(getattr(explorer, widget), "value", 0)


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
