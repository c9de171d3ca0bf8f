"""The normalisation every guard matches on (see the package's docstring)."""

from __future__ import annotations

import unicodedata

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-")
_QUOTES = dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2032"), "'") | dict.fromkeys(
    map(ord, "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"), '"')


def _visible(text: str) -> str:
    """Without format characters (zero-width space and joiners, soft hyphen, word joiner, BOM,
    direction marks: category Cf), with every script's decimal digits as ASCII digits."""
    if text.isascii():
        return text
    out = []
    for char in text:
        if char.isascii():
            out.append(char)
        elif char.isdecimal():
            out.append(str(unicodedata.decimal(char)))
        elif unicodedata.category(char) != "Cf":
            out.append(char)
    return "".join(out)


def normalise(text: str) -> str:
    """Invisible characters removed, any script's digits as ASCII, NFKC (fullwidth digits,
    no-break spaces), one kind of dash and quote, single spaces."""
    text = unicodedata.normalize("NFKC", _visible(text)).translate(_DASHES).translate(_QUOTES)
    return " ".join(text.split())


def folded(text: str) -> tuple[str, list[int]]:
    """The view :func:`normalise` gives, built character by character, with for each of its
    characters the offset in ``text`` of the character it comes from (and ``len(text)`` appended),
    so that a cut found in the view is a cut in ``text``: the form checks and the jobs' cuts see
    the same sentences. Runs of white space become one space; the ends are kept as they are."""
    if text.isascii() and " ".join(text.split()) == text:
        return text, [*range(len(text)), len(text)]
    view: list[str] = []
    origin: list[int] = []
    for offset, char in enumerate(text):
        # Per character, not per text: NFKC's composition across characters (e + combining accent)
        # never makes or removes a sentence end, and this keeps every view character traceable.
        for out in unicodedata.normalize("NFKC", _visible(char)).translate(_DASHES).translate(_QUOTES):
            if out.isspace():
                if view and view[-1] == " ":
                    continue
                out = " "
            view.append(out)
            origin.append(offset)
    origin.append(len(text))
    return "".join(view), origin
