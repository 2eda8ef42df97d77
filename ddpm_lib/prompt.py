"""Text prompt to class: ``"a striped texture"`` -> ``stripes``, ``"digit seven"`` -> ``seven``.

The models here are conditioned on a class label, not on text. A prompt is mapped
to a class by matching its words against the class names:

1. the prompt and each class name are normalised (Unicode NFKC, so a composed and
   a decomposed accent are the same letter and full-width ``７`` is ``7``), case-folded
   (``Café`` -> ``café``, ``Straße`` -> ``strasse``) and split into words: runs of
   letters (with their accents) and digits of any script; anything else, ``_`` and
   ``-`` included, separates words, so ``chequered_tiles`` is two words. Han
   ideographs and kana are written without spaces, so each one is a word of its
   own: the class ``猫`` is found in ``"一只猫"``;
2. a one-digit word also counts as its English name (``"7"`` -> ``seven``);
3. a class matches when every word of its name matches a prompt word. Two words
   match when they are equal or, for words of at least 4 letters, when they share
   a stem: one starts with the other minus a common ending (``-s``, ``-es``,
   ``-ed``, ``-ing``, ``-y``), so ``striped`` matches ``stripes`` and ``dotted``
   matches ``dots``;
4. exactly one class must match; a bare class index (``"3"``) is *not* read as an
   index, only as a word. Nothing or several matching is a :class:`DDPMError`
   listing the classes.
"""

from __future__ import annotations

import unicodedata

from .errors import DDPMError

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_ENDINGS = ("ing", "es", "ed", "s", "y")


# Scripts written without spaces between words: each of their characters is a word.
_UNSPACED_SCRIPTS = ("CJK UNIFIED IDEOGRAPH", "HIRAGANA", "KATAKANA")


def _is_word_char(ch: str) -> bool:
    """A letter, a combining mark (an accent, a vowel sign) or a digit, of any script."""
    return unicodedata.category(ch)[0] in "LMN"


def _stands_alone(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(_UNSPACED_SCRIPTS)


def _split_words(text: str) -> list[str]:
    """Runs of word characters of ``text``; a character of an unspaced script is a run of its own."""
    out, current = [], ""
    for ch in text:
        if _is_word_char(ch) and not _stands_alone(ch):
            current += ch
            continue
        if current:
            out.append(current)
        current = ""
        if _is_word_char(ch):
            out.append(ch)
    return out + [current] if current else out


def words(text: str) -> list[str]:
    """Case-folded NFKC words of ``text`` (module docstring); one-digit words add their English names."""
    out = []
    # folding can undo the normal form ("İ" -> "i" + combining dot): normalise again after it
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    for word in _split_words(folded):
        out.append(word)
        if word.isdecimal() and len(word) == 1:  # not isdigit(): int() cannot read Ethiopic "፯"
            out.append(NUMBER_WORDS[int(word)])
    return out


def _stem(word: str) -> str:
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            return word[: -len(ending)]
    return word


def words_match(a: str, b: str) -> bool:
    """Equal, or (both of 4+ letters) one starts with the other's stem: stripes ~ striped."""
    if a == b:
        return True
    if min(len(a), len(b)) < 4:
        return False
    return a.startswith(_stem(b)) or b.startswith(_stem(a))


def class_from_prompt(prompt: str, class_names: list[str]) -> int:
    """Index of the one class whose name's words all appear in ``prompt`` (module docstring)."""
    said = words(prompt)
    matches = [i for i, name in enumerate(class_names)
               if words(name) and all(any(words_match(w, p) for p in said) for w in words(name))]
    # "dotted stripes" could match two single-word classes; a longer class name that
    # matches is more specific than a shorter one it contains, so prefer it
    if len(matches) > 1:
        longest = max(len(words(class_names[i])) for i in matches)
        matches = [i for i in matches if len(words(class_names[i])) == longest]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(class_names)
    if not matches:
        raise DDPMError(f"prompt {prompt!r} names none of the classes; name one of: {listed}")
    raise DDPMError(f"prompt {prompt!r} matches several classes ({', '.join(class_names[i] for i in matches)}); "
                    f"name exactly one of: {listed}")
