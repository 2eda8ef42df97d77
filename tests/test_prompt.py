"""Text prompt -> class: word matching against the class names."""

import pytest

from ddpm_lib.data import DIGIT_NAMES, TEXTURE_NAMES
from ddpm_lib.errors import DDPMError
from ddpm_lib.prompt import class_from_prompt, words, words_match


@pytest.mark.parametrize("prompt, names, expected", [
    ("a striped texture", TEXTURE_NAMES, "stripes"),
    ("Polka DOTS, please", TEXTURE_NAMES, "dots"),
    ("a dotted pattern", TEXTURE_NAMES, "dots"),
    ("wavy lines", TEXTURE_NAMES, "waves"),
    ("checkered board", TEXTURE_NAMES, "checks"),
    ("digit seven", DIGIT_NAMES, "seven"),
    ("a handwritten 7", DIGIT_NAMES, "seven"),
    ("zero", DIGIT_NAMES, "zero"),
    ("banded fabric", ["banded", "striped", "zigzagged"], "banded"),
    ("a lined sheet", ["lined", "lined_paper"], "lined"),
    ("some lined paper", ["lined", "lined_paper"], "lined_paper"),  # the more specific name wins
])
def test_prompt_maps_to_the_named_class(prompt, names, expected):
    assert names[class_from_prompt(prompt, names)] == expected


@pytest.mark.parametrize("prompt, names, words_in_error", [
    ("a cat", DIGIT_NAMES, ["names none", "zero, one, two"]),
    ("seven or eight", DIGIT_NAMES, ["several", "seven, eight"]),
    ("", TEXTURE_NAMES, ["names none", "stripes"]),
    ("st", TEXTURE_NAMES, ["names none"]),  # short words never match by stem
])
def test_unmatched_or_ambiguous_prompt_lists_the_classes(prompt, names, words_in_error):
    with pytest.raises(DDPMError) as err:
        class_from_prompt(prompt, names)
    message = str(err.value)
    assert "\n" not in message
    for word in words_in_error:
        assert word in message


def test_words_and_stems():
    assert words("Chequered_tiles 3") == ["chequered", "tiles", "3", "three"]
    assert words_match("striped", "stripes") and words_match("dots", "dotted")
    assert not words_match("one", "ones")  # under 4 letters: exact only
    assert not words_match("stripes", "strings")
