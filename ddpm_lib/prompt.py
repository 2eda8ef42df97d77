"""Text prompt to class: ``"a striped texture"`` -> ``stripes``, ``"digit seven"`` -> ``seven``.

The models here are conditioned on a class label, not on text. A prompt is mapped
to a class by matching its words against the class names:

1. the prompt and each class name are lower-cased and split into words
   (letters and digits; ``_`` and ``-`` separate words, so ``chequered_tiles``
   is two words);
2. a digit in the prompt also counts as its English name (``"7"`` -> ``seven``);
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

import re

from .errors import DDPMError

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_ENDINGS = ("ing", "es", "ed", "s", "y")


def words(text: str) -> list[str]:
    """Lower-case words of ``text``; digits become their English names too."""
    out = []
    for word in re.findall(r"[a-z0-9]+", text.lower().replace("_", " ")):
        out.append(word)
        if word.isdigit() and len(word) == 1:
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
