"""Invented numbers: :func:`invented_numbers`, the numbers of an answer its input does not support."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .text import normalise

# Number words by value. Every one supports its value when the *input* has it ("two weeks"
# supports "2"); in an *answer* the unambiguous ones are checked like digits ("fifteen minutes"
# needs a 15 in the input), the others (_AMBIGUOUS: articles, ordinals, "second", "noon") are not.
_NUMBER_WORDS: Final = {
    # en
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "million": 1_000_000, "dozen": 12, "twice": 2, "noon": 12, "midnight": 0,
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "tenth": 10, "once": 1, "both": 2,
    "pair": 2, "couple": 2,
    # fr
    "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7, "huit": 8,
    "neuf": 9, "dix": 10, "onze": 11, "douze": 12, "treize": 13, "quatorze": 14, "quinze": 15, "seize": 16,
    "vingt": 20, "trente": 30, "quarante": 40, "cinquante": 50, "soixante": 60, "cent": 100, "cents": 100,
    "mille": 1000, "midi": 12, "minuit": 0, "premier": 1, "première": 1,
    # de
    "null": 0, "eins": 1, "ein": 1, "eine": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "sechs": 6,
    "sieben": 7, "acht": 8, "neun": 9, "zehn": 10, "elf": 11, "zwölf": 12, "zwanzig": 20, "dreißig": 30,
    "vierzig": 40, "fünfzig": 50, "hundert": 100, "tausend": 1000, "mittag": 12, "erste": 1, "ersten": 1,
    # es
    "cero": 0, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7,
    "ocho": 8, "nueve": 9, "diez": 10, "doce": 12, "quince": 15, "veinte": 20, "treinta": 30,
    "cuarenta": 40, "cincuenta": 50, "cien": 100, "ciento": 100, "mil": 1000, "mediodía": 12, "primero": 1,
    "primera": 1,
}
_AMBIGUOUS_NUMBER_WORDS: Final = frozenset("""
    zero one noon midnight first second third fourth fifth tenth once both pair couple
    un une cent cents midi minuit premier première sept
    null eins ein eine elf mittag erste ersten
    cero uno una mil mediodía primero primera
""".split())
# Multipliers: "two hundred" is 200, "three thousand" 3000, "two dozen" 24.
_SCALES: Final = frozenset({"hundred", "thousand", "million", "dozen", "cent", "cents", "mille", "hundert",
                            "tausend", "cien", "ciento", "mil"})
# Between two number words of one number: "hundred and fifty", "vingt et un", "treinta y cinco".
_NUMBER_JOINER = re.compile(r"\s*-\s*|\s+(?:(?:and|et|und|y)\s+)?")
_WORD = re.compile(r"[^\W\d_]+")

# Thousands written with spaces ("1 000 000") first, then any run of digits and letters joined by
# the separators numbers use inside themselves (. , : '). A token starts where a run of letters and
# digits starts (the lookbehind), which keeps the scan linear on text without spaces.
_NUMERIC = re.compile(r"(?<![^\W_])(?:\d{1,3}(?: \d{3})+(?!\d)|[^\W_]*\d[^\W_]*(?:[.,:'][^\W_]*\d[^\W_]*)*)")
# Letters that may follow a number without making it an identifier: ordinals, units, times.
_SUFFIX = re.compile(
    r"(?:st|nd|rd|th|e|er|re|ème|eme|o|a|º|ª|h|am|pm|k|m|km|kg|g|mg|ml|l|cm|mm|gb|mb|kb|tb|ms|s|sec|min|"
    r"mins|hr|hrs|d|w|y|x|p|px|mbps|ghz|mhz|kw|kwh|v|mp)$",
    re.IGNORECASE,
)
_PM_AFTER = re.compile(r"\s?(?:pm|p\.m\.)(?![^\W_])", re.IGNORECASE)
_AM_AFTER = re.compile(r"\s?(?:am|a\.m\.)(?![^\W_])", re.IGNORECASE)
_CLOCK_FORM = re.compile(r"(\d+)(?::\d\d)?")
# A number cut short is marked as such: "Ref 1234567…" (the title's 80-character cap).
_ELLIPSIS = ("…", "...")

# Superscript and subscript digits. After a letter or a bracket they are exponents, footnote marks
# or formulas ("120 m²", "Footnote¹", "H₂O"): not numbers. Anywhere else they are digits, read
# apart from what precedes them ("Order ¹²³⁴" is 1234; "10²" is 10 and 2).
_SMALL_DIGITS = re.compile(r"([^\W\d_]|[)\]])?([\u00b9\u00b2\u00b3\u2070\u2074-\u2079\u2080-\u2089]+)")


def _small_digits(match: re.Match[str]) -> str:
    return match.group(1) if match.group(1) else " " + match.group(2)


def _number_text(text: str) -> str:
    return normalise(_SMALL_DIGITS.sub(_small_digits, text))


def _strip_int(digits: str) -> str:
    return digits.lstrip("0") or "0"


def _decimal(whole: str, fraction: str) -> str:
    fraction = fraction.rstrip("0")
    return _strip_int(whole) + ("." + fraction if fraction else "")


def _forms(token: str, pm: bool) -> set[str]:
    """Canonical forms of one numeric token: what it could mean, so that two spellings meet.

    ``9:30``, ``09:30``, ``9h30`` and ``9.30`` share ``9:30``; ``1,000``, ``1 000`` and ``1000``
    share ``1000``; ``5.70`` and ``5,7`` share ``5.7``; leading zeros are dropped; ``3pm`` also
    means ``15`` and ``15:00``; ``9:00`` also means ``9``. A digit group after a separator makes a
    thousands grouping, never a decimal: ``1,000`` and ``10.000`` are 1000 and 10000, not 1 and 10
    (a decimal is read only where no thousands reading exists: ``5,7``, ``1.5``, ``2.50``).
    """
    token = token.lower().replace("'", ",")
    forms: set[str] = set()
    time = re.fullmatch(r"(\d{1,2})[:h.](\d{2})", token)
    if time and int(time.group(1)) <= 24 and int(time.group(2)) < 60:
        hour, minute = int(time.group(1)), time.group(2)
        hours = {hour, hour + 12} if pm and hour < 12 else {hour}
        for h in hours:
            forms.add(f"{h}:{minute}")
            if minute == "00":
                forms.add(str(h))
    grouped = re.fullmatch(r"(\d{1,3}(?:([ ,.])\d{3})+)(?:([.,])(\d+))?", token)
    if grouped and grouped.group(3) != grouped.group(2):
        # Thousands grouping, with a decimal part after the other separator: "1,234.56", "1.234,56".
        forms.add(_decimal(re.sub(r"\D", "", grouped.group(1)), grouped.group(4) or ""))
    elif re.fullmatch(r"\d+[.,]\d+", token):
        whole, fraction = re.split(r"[.,]", token)
        forms.add(_decimal(whole, fraction))
    if token.isdigit():
        forms.add(_strip_int(token))
        if pm and int(token) < 12:
            forms.update({str(int(token) + 12), f"{int(token) + 12}:00"})
        if len(token) <= 2:
            forms.add(f"{int(token)}:00")
    if not forms:
        # Versions and dotted dates, part by part without leading zeros: "14.05.2024" = "14.5.2024".
        forms.add(".".join(_strip_int(part) if part.isdigit() else part for part in re.split(r"[.,:]", token)))
    return forms


@dataclass(frozen=True)
class _Number:
    """One number of a (normalised) text: as written, where, and what it may mean."""

    written: str
    start: int
    end: int
    #: "number", "identifier" (letters and several digit runs mixed: a commit hash, "LH2X5"; must be
    #: copied whole) or "words" (a number written in words).
    kind: str
    forms: frozenset[str]
    runs: tuple[str, ...] = ()
    #: Followed by an ellipsis: a number cut short, which may be the start of one of the input's.
    truncated: bool = False
    #: "am" or "pm" written after it (or glued to it: "7pm"), else None.
    meridiem: str | None = None


def _numeric_tokens(text: str) -> list[_Number]:
    """The numbers and identifiers with a digit in ``text`` (already normalised)."""
    tokens = []
    for match in _NUMERIC.finditer(text):
        written = match.group().rstrip(".,:'")
        runs = tuple(re.findall(r"\d+", written))
        if not runs:
            continue
        end = match.start() + len(written)
        truncated = text.startswith(_ELLIPSIS, end)
        meridiem = _meridiem(text, match.end(), written)
        pm = meridiem == "pm"
        letters = re.sub(r"[\d.,:' ]", "", written)
        core = written
        if letters:
            core = re.sub(r"^[a-z]{1,2}(?=\d)", "", written, flags=re.IGNORECASE)  # v2.1, no12, x86
            core = re.sub(r"(?<=\d)[^\W\d_]+$", lambda m: "" if _SUFFIX.fullmatch(m.group()) else m.group(), core)
            # French times: 9h30 (the "h" between digits)
            core = re.sub(r"^(\d{1,2})h(\d{2})$", r"\1:\2", core, flags=re.IGNORECASE)
        if re.search(r"[^\W\d_]", core):
            if len(runs) == 1:
                kind, forms = "number", {_strip_int(runs[0])}
            else:
                kind, forms = "identifier", {written.lower()}
        else:
            kind, forms = "number", _forms(core, pm)
        tokens.append(_Number(written, match.start(), end, kind, frozenset(forms), runs, truncated, meridiem))
    return tokens


def _meridiem(text: str, end: int, written: str = "") -> str | None:
    if _PM_AFTER.match(text, end) or written.lower().endswith("pm"):
        return "pm"
    if _AM_AFTER.match(text, end) or written.lower().endswith("am"):
        return "am"
    return None


def _afternoon(forms: frozenset[str]) -> frozenset[str]:
    """The forms of an answer's "pm" number that say the afternoon: "7 pm" is 19 and 19:00 there,
    never 7 (an input's "7 am" must not support it)."""
    return frozenset(f for f in forms if (m := _CLOCK_FORM.fullmatch(f)) is None or int(m.group(1)) >= 12)


def _word_value(values: Sequence[int]) -> int:
    total = current = 0
    for value in values:
        if value in (12, 100) and len(values) > 1 and value == values[-1] and current:
            current *= value  # "two dozen", "deux cents"
        elif value == 100:
            current = (current or 1) * 100
        elif value >= 1000:
            total += (current or 1) * value
            current = 0
        else:
            current += value
    return total + current


def _joins(previous: str, word: str) -> bool:
    """Whether ``word`` continues the number ``previous`` started: "twenty five", "two hundred",
    "thousand two", "vingt et un" (but not "two three", "first two")."""
    before, value = _NUMBER_WORDS[previous], _NUMBER_WORDS[word]
    if word in _SCALES:
        return previous not in _AMBIGUOUS_NUMBER_WORDS or previous in ("one", "un", "une", "ein", "eine", "uno", "una")
    if previous in _SCALES:
        return value < before and word not in _AMBIGUOUS_NUMBER_WORDS
    return before >= 20 and before % 10 == 0 and 1 <= value <= 9 and word not in ("first", "second", "once")


def _word_numbers(text: str) -> list[_Number]:
    """Numbers written in words, a run of number words being one number ("two hundred and fifty")."""
    found: list[_Number] = []
    group: list[re.Match[str]] = []

    def close() -> None:
        if not group:
            return
        keys = [m.group().lower() for m in group]
        value = _word_value([_NUMBER_WORDS[k] for k in keys])
        forms = {str(value)} | ({f"{value}:00"} if value <= 24 else set())
        meridiem = _meridiem(text, group[-1].end())
        if meridiem == "pm" and value < 12:
            forms |= {str(value + 12), f"{value + 12}:00"}
        kind = "words" if len(keys) > 1 or keys[0] not in _AMBIGUOUS_NUMBER_WORDS else "ambiguous"
        found.append(_Number(text[group[0].start():group[-1].end()], group[0].start(), group[-1].end(), kind,
                             frozenset(forms), meridiem=meridiem))
        group.clear()

    for match in _WORD.finditer(text):
        key = match.group().lower()
        if key not in _NUMBER_WORDS:
            close()
            continue
        if group and not (_NUMBER_JOINER.fullmatch(text, group[-1].end(), match.start())
                          and _joins(group[-1].group().lower(), key)):
            close()
        group.append(match)
    close()
    return found


#: Number words that, alone in an input, are rarely the number: "per cent" (a percentage or a
#: coin, not 100), "mil" (also a unit), "a second time" (not 2), "returned null" (not 0).
_NOT_NUMBERS_ALONE: Final = frozenset({"cent", "cents", "mil", "second", "null"})


def _source_word_forms(text: str, morning: bool = False) -> set[str]:
    """What the input's number words support: each run's value and each word's own value, except
    the words of _NOT_NUMBERS_ALONE when alone. ``morning``: only those not followed by "pm"."""
    supported: set[str] = set()
    for number in _word_numbers(text):
        keys = [w.lower() for w in _WORD.findall(number.written)]
        if len(keys) == 1 and keys[0] in _NOT_NUMBERS_ALONE:
            continue
        if morning and number.meridiem == "pm":
            continue
        supported |= number.forms
        for key in keys:
            value = _NUMBER_WORDS[key]
            supported |= {str(value)} | ({f"{value}:00"} if value <= 24 else set())
    return supported


def number_forms(text: str, morning: bool = False) -> set[str]:
    """Everything in ``text`` an output number may match: each token's forms, every digit run in it
    (so "1 555 123 4567" supports "555"), and numbers written as words ("two weeks" supports "2").
    ``morning``: only what is not marked "pm" (what an answer's "am" number may match)."""
    text = _number_text(text)
    supported = _source_word_forms(text, morning)
    for token in _numeric_tokens(text):
        if morning and token.meridiem == "pm":
            continue
        supported |= token.forms
        supported |= {_strip_int(run) for run in token.runs}
    return supported


def _invented_in(output: str, source: str) -> list[_Number]:
    """The unsupported numbers of ``output``, in order; both texts already normalised."""
    supported = number_forms(source)
    morning = number_forms(source, morning=True)
    source_tokens = _numeric_tokens(source)
    identifiers = {f for token in source_tokens if token.kind == "identifier" for f in token.forms}
    whole = {token.written.lower() for token in source_tokens} | {run for t in source_tokens for run in t.runs}
    invented = []
    for token in _numeric_tokens(output):
        pool = identifiers if token.kind == "identifier" else morning if token.meridiem == "am" else supported
        forms = _afternoon(token.forms) if token.meridiem == "pm" and token.kind == "number" else token.forms
        if forms & pool:
            continue
        if token.truncated and any(w.startswith(token.written.lower()) for w in whole):
            continue  # "1234567…": the start of one of the input's numbers, marked as cut
        invented.append(token)
    invented += [n for n in _word_numbers(output) if n.kind == "words" and not _word_supported(n, supported, morning)]
    return sorted(invented, key=lambda n: n.start)


def _word_supported(number: _Number, supported: set[str], morning: set[str]) -> bool:
    if number.meridiem == "pm":
        return bool(_afternoon(number.forms) & supported)
    return bool(number.forms & (morning if number.meridiem == "am" else supported))


def invented_numbers(output: str, source: str) -> list[str]:
    """The numbers of ``output`` (as written) that ``source`` does not support.

    A number is a run of digits with the separators numbers carry inside (``1,000``, ``5.7``,
    ``9:30``, ``2.13.1``), or a number in words (``fifteen``, ``two hundred``, ``vingt-cinq``);
    dashes and slashes separate numbers, so ranges and dates are checked part by part (``14-15
    May`` against ``14-16 May`` reports ``15``). Normalisation, so that a faithful rewrite is not
    reported: Unicode digits, dashes and invisible characters are folded (superscripts after a
    letter are exponents: ``m²``); leading zeros are dropped (``09:30`` = ``9:30``, ``007`` =
    ``7``); thousands separators are ignored (``1,000`` = ``1 000`` = ``1000``, and a group of
    three digits after a separator is always thousands: ``1,000`` is never the decimal 1); decimal
    comma = decimal point and trailing zeros are dropped (``5,70`` = ``5.7``); time separators
    ``:``, ``h`` and ``.`` are one (``9h30`` = ``9.30`` = ``9:30``); ``3pm`` supports ``15:00``
    (but an answer's ``pm`` time needs the afternoon in the input: ``7 pm`` is not supported by
    ``7 am`` nor by a bare ``7``; an answer's ``am`` time needs an input number not marked ``pm``);
    ``9:00`` and ``9`` support each other; ordinals and units are stripped (``14th`` = ``14``,
    ``5km`` = ``5``); a number in the output may be any digit run of the input (``555`` from
    ``555-0142``) or a number word of the input (``2`` from ``two``, ``deux``, ``zwei``; "per cent"
    is no 100, a lone "second" no 2, "null" no 0); a number the output marks as cut (``1234…``)
    may be the start of one of the input's. In the output, number words are checked like digits
    (``fifteen`` needs a 15 in the input), except the ambiguous ones (``one``, ``second``,
    articles such as ``un``/``ein``).
    Not normalised (these are reported): a decimal that is a different number (``5.7`` against
    ``5`` and ``7``), arithmetic (``3 days`` from ``Monday to Wednesday``), reformatted long
    numbers (``5550142`` from ``555-0142``). Identifiers with several digit runs among letters
    (commit hashes such as ``a1b2c3d``) must appear whole in the source.
    """
    return [n.written for n in _invented_in(_number_text(output), _number_text(source))]


def without_invented_numbers(text: str, source: str) -> str:
    """``text`` without the words that carry a number ``source`` does not support (words as split
    by white space, so no number is ever cut into a different one). Repeated until none is left:
    dropping a word can join two neighbours into a new number ("1 [x] 000" -> "1 000")."""
    words_ = text.split()
    source = _number_text(source)
    while True:
        normal = [_number_text(w) for w in words_]
        bounds, offset = [], 0
        for word in normal:
            bounds.append((offset, offset + len(word)))
            offset += len(word) + 1
        spans = [(n.start, n.end) for n in _invented_in(" ".join(normal), source)]
        if not spans:
            return " ".join(words_)
        # Every span starts inside a word, so each round drops at least one.
        words_ = [w for w, (a, b) in zip(words_, bounds) if not any(s < b and a < e for s, e in spans)]
