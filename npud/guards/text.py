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
