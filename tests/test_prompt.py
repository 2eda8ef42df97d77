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


@pytest.mark.parametrize("prompt, names, expected", [
    ("a PÁJARO flying", ["pa\u0301jaro", "perro"], "pa\u0301jaro"),  # decomposed (macOS folder names)
    ("cafe\u0301 au lait", ["café", "thé"], "café"),  # ... and composed accents are the same letter
    ("bir ağ", ["ağ", "ağaç"], "ağ"),  # was read as "a" and "a", "a": the longer name won
    ("un caffè", ["caffè", "caffelatte"], "caffè"),  # was "caff", which "caffelatte" starts with
    ("большая КОШКА", ["кошка", "собака"], "кошка"),
    ("μια γάτα", ["Γάτα", "σκύλος"], "Γάτα"),
    ("बिल्ली की तस्वीर", ["कुत्ता", "बिल्ली"], "बिल्ली"),  # vowel signs stay inside their word
    ("一只猫", ["狗", "猫", "熊猫"], "猫"),  # Chinese has no spaces: each ideograph is a word
    ("一只熊猫", ["狗", "猫", "熊猫"], "熊猫"),
    ("ネコの絵", ["イヌ", "ネコ"], "ネコ"),
    ("a handwritten ７", DIGIT_NAMES, "seven"),  # full-width digit
])
def test_prompt_maps_to_a_non_ascii_class_name(prompt, names, expected):
    assert names[class_from_prompt(prompt, names)] == expected


def test_words_are_unicode_aware():
    assert words("Café_CRÈME ７") == ["café", "crème", "7", "seven"]
    assert words("cafe\u0301") == words("café") and words("Straße") == ["strasse"]
    assert words("l'oiseau-lyre") == ["l", "oiseau", "lyre"]
    assert words("٧") == ["٧", "seven"] and words("፯") == ["፯"]  # an Ethiopic digit has no int() value
