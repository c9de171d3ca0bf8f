"""Invented numbers: :func:`invented_numbers`, the numbers of an answer its input does not support."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .text import normalise

# Number words by value, per language: cardinals, from which the ordinals are derived by each
# language's rule (a table, not a list of cases: "fifteenth", "twenty-first", "quinzième",
# "fünfzehnte" all follow), and the other words that say a number ("dozen", "noon", "both").
_UNITS_EN: Final = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                    "sixteen seventeen eighteen nineteen").split()
_TENS_EN: Final = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_CARDINALS_EN: Final = ({"zero": 0} | {w: i for i, w in enumerate(_UNITS_EN, 1)}
                        | {w: 10 * i for i, w in enumerate(_TENS_EN, 2)}
                        | {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000})
_UNITS_FR: Final = "un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize".split()
_CARDINALS_FR: Final = ({w: i for i, w in enumerate(_UNITS_FR, 1)} | {"une": 1, "vingt": 20, "vingts": 20, "trente": 30,
                        "quarante": 40, "cinquante": 50, "soixante": 60, "septante": 70, "huitante": 80,
                        "octante": 80, "nonante": 90, "cent": 100, "cents": 100, "mille": 1000, "million": 1_000_000})
_UNITS_DE: Final = "ein zwei drei vier fünf sechs sieben acht neun".split()
_TEENS_DE: Final = "zehn elf zwölf dreizehn vierzehn fünfzehn sechzehn siebzehn achtzehn neunzehn".split()
_TENS_DE: Final = "zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()
_CARDINALS_DE: Final = (
    {"null": 0, "eins": 1, "eine": 1} | {w: i for i, w in enumerate(_UNITS_DE, 1)}
    | {w: i for i, w in enumerate(_TEENS_DE, 10)} | {w: 10 * i for i, w in enumerate(_TENS_DE, 2)}
    | {"dreissig": 30, "hundert": 100, "tausend": 1000, "million": 1_000_000, "millionen": 1_000_000}
    # German writes 21-99 and the round hundreds and thousands as one word: "fünfundzwanzig".
    | {f"{u}und{t}": 10 * j + i for i, u in enumerate(_UNITS_DE, 1) for j, t in enumerate(_TENS_DE, 2)}
    | {f"{u}{s}": i * v for i, u in enumerate(_UNITS_DE, 1) for s, v in (("hundert", 100), ("tausend", 1000))}
)
_CARDINALS_ES: Final = {
    "cero": 0, "uno": 1, "una": 1, "un": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7,
    "ocho": 8, "nueve": 9, "diez": 10, "doce": 12, "trece": 13, "catorce": 14, "quince": 15, "dieciséis": 16,
    "diecisiete": 17, "dieciocho": 18, "diecinueve": 19, "veinte": 20, "veintiuno": 21, "veintiún": 21,
    "veintiuna": 21, "veintidós": 22, "veintitrés": 23, "veinticuatro": 24, "veinticinco": 25, "veintiséis": 26,
    "veintisiete": 27, "veintiocho": 28, "veintinueve": 29, "treinta": 30, "cuarenta": 40, "cincuenta": 50,
    "sesenta": 60, "setenta": 70, "ochenta": 80, "noventa": 90, "cien": 100, "ciento": 100, "doscientos": 200,
    "trescientos": 300, "cuatrocientos": 400, "quinientos": 500, "seiscientos": 600, "setecientos": 700,
    "ochocientos": 800, "novecientos": 900, "mil": 1000, "millón": 1_000_000, "millones": 1_000_000,
    # ("once", 11, is English "once" and stays 1.)
}


def _ordinal_en(word: str) -> str:
    irregular = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                 "nine": "ninth", "twelve": "twelfth"}
    return irregular.get(word) or (word[:-1] + "ieth" if word.endswith("y") else word + "th")


def _ordinal_fr(word: str) -> str:
    stem = {"cinq": "cinqu", "neuf": "neuv"}.get(word, word[:-1] if word.endswith("e") else word)
    return stem + "ième"


def _ordinals_de(word: str) -> list[str]:
    # zweite, dritte, siebte, achte, zwölfte; from 20 on "-ste": zwanzigste, hundertste. Every case ending.
    stem = {"drei": "dritt", "sieben": "siebt", "acht": "acht"}.get(word) or (
        word + ("st" if _CARDINALS_DE[word] >= 20 else "t"))
    return [stem + ending for ending in ("e", "en", "er", "es", "em")]


def _unaccented(word: str) -> str:
    """A Spanish word as typed without its acute accents ("veintidós" as "veintidos"); ñ stays."""
    return word.translate(str.maketrans("áéíóú", "aeiou"))


def _as_typed(table: dict[str, int]) -> dict[str, int]:
    """Spanish is often typed without accents: "veintidos", "dieciseis", "vigesimo" are the same
    numbers as "veintidós", "dieciséis", "vigésimo"."""
    return table | {_unaccented(w): v for w, v in table.items()}


# Spanish ordinals share no rule with the cardinals: a table of their own.
_ORDINALS_ES: Final = _as_typed(
    {w + g: v for w, v in (("primer", 1), ("segund", 2), ("tercer", 3), ("cuart", 4), ("quint", 5),
                           ("sext", 6), ("séptim", 7), ("octav", 8), ("noven", 9), ("décim", 10),
                           ("undécim", 11), ("duodécim", 12), ("decimoprimer", 11), ("decimosegund", 12),
                           ("decimotercer", 13), ("decimocuart", 14), ("decimoquint", 15), ("decimosext", 16),
                           ("decimoséptim", 17), ("decimoctav", 18), ("decimonoven", 19), ("vigésim", 20),
                           ("trigésim", 30), ("cuadragésim", 40), ("quincuagésim", 50), ("sexagésim", 60),
                           ("septuagésim", 70), ("octogésim", 80), ("nonagésim", 90), ("centésim", 100),
                           ("milésim", 1000))
     for g in ("o", "a")} | {"primer": 1, "tercer": 3}
)


_ORDINALS: Final = (
    {_ordinal_en(w): v for w, v in _CARDINALS_EN.items() if v and w != "one"}
    | {_ordinal_fr(w): v for w, v in _CARDINALS_FR.items() if w not in ("une", "vingts", "cents")}
    | {o: v for w, v in _CARDINALS_DE.items() if v >= 2 and w != "millionen" for o in _ordinals_de(w)}
    | {"erst" + ending: 1 for ending in ("e", "en", "er", "es", "em")}
    | {"first": 1, "premier": 1, "première": 1, "seconde": 2}
    | _ORDINALS_ES
)
_NUMBER_WORDS: Final = (
    _CARDINALS_EN | _CARDINALS_FR | _CARDINALS_DE | _as_typed(_CARDINALS_ES) | _ORDINALS
    | {"dozen": 12, "twice": 2, "noon": 12, "midnight": 0, "once": 1, "both": 2, "pair": 2, "couple": 2,
       "midi": 12, "minuit": 0, "mittag": 12, "mediodía": 12, "mediodia": 12}
)
# In an *answer* the unambiguous words are checked like digits ("fifteen minutes" needs a 15 in the
# input, "fifteenth" too); these are not: articles, "second" and the ordinals of 1 to 5 and 10
# ("a third", "the first time", "a tenth of"), words that are also other words ("sept", "elf",
# "achten", "cuarto"), "noon".
_AMBIGUOUS_NUMBER_WORDS: Final = frozenset({w for w, v in _ORDINALS.items() if v in (1, 2, 3, 4, 5, 10)} | set("""
    zero one noon midnight once both pair couple
    un une cent cents midi minuit sept
    null eins ein eine elf mittag achte achten achter
    cero uno una mil mediodía mediodia
""".split()))
_SCALE_WORDS: Final = ("hundred", "thousand", "million", "billion", "cent", "cents", "mille", "hundert", "tausend",
                       "millionen", "cien", "ciento", "mil", "millón", "millon", "millones")
# Multipliers: "two hundred" is 200, "three thousand" 3000, "two dozen" 24; their ordinals too
# ("two hundredth").
_SCALES: Final = frozenset({"dozen", *_SCALE_WORDS, *(w for w, v in _ORDINALS.items() if v in (100, 1000, 10**6, 10**9))})
_ORDINAL_WORDS: Final = frozenset(_ORDINALS)
# Between two number words of one number: "hundred and fifty", "vingt et un" (since the 1990
# spelling also "vingt-et-un"), "treinta y cinco".
_NUMBER_JOINER = re.compile(r"\s*-\s*(?:et\s*-\s*)?|\s+(?:(?:and|et|und|y)\s+)?")
# "and" and "und" join only after a scale ("two hundred and fifty", "hundert und eins"): "between
# forty and five hundred" is two numbers, not 4500.
_SCALE_JOINERS: Final = frozenset({"and", "und"})
_JOINER_WORDS: Final = frozenset({"and", "et", "und", "y"})
_WORD = re.compile(r"[^\W\d_]+")

# Thousands written with spaces ("1 000 000") first, then any run of digits and letters joined by
# the separators numbers use inside themselves (. , : '). A token starts where a run of letters and
# digits starts (the lookbehind), which keeps the scan linear on text without spaces. CJK
# characters (Han, kana, Hangul) are no letters here: they are written without spaces, so a number
# glued to them ("3月14日", "5,000円") is a number, not part of one long identifier.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_ALNUM = f"[^\\W_{_CJK}]"
_ALNUM_RE = re.compile(_ALNUM)
_NUMERIC = re.compile(
    rf"(?<!{_ALNUM})(?:\d{{1,3}}(?: \d{{3}})+(?!\d)|{_ALNUM}*\d{_ALNUM}*(?:[.,:']{_ALNUM}*\d{_ALNUM}*)*)")
# A minus sign: "-" (any dash, folded) right before a number and after no letter or digit
# ("-5°C", "(-3)"), so not the hyphen of a range or date ("14-16 May", "2024-05-14", "A-5").
_MINUS_BEFORE = re.compile(r"(?<![^\W_])-")
# The word "minus" before a number is its sign too ("minus 5 °C", "minus five"; English and German).
_MINUS_WORD = "minus "
# Letters that may follow a number without making it an identifier: ordinals, units, times.
_SUFFIX = re.compile(
    r"(?:st|nd|rd|th|e|er|re|ème|eme|o|a|º|ª|h|am|pm|k|m|km|kg|g|mg|ml|l|cm|mm|gb|mb|kb|tb|ms|s|sec|min|"
    r"mins|hr|hrs|d|w|y|x|p|px|mbps|ghz|mhz|kw|kwh|v|mp)$",
    re.IGNORECASE,
)
_PM_AFTER = re.compile(r"\s?(?:pm|p\.m\.)(?![^\W_])", re.IGNORECASE)
_AM_AFTER = re.compile(r"\s?(?:am|a\.m\.)(?![^\W_])", re.IGNORECASE)
_CLOCK_FORM = re.compile(r"(\d+)(?::\d\d)?")
# A number cut short by npud's own cap is marked as such: "Ref 1234567…" (jobs: the title's
# 80-character cap cuts inside a word only when the word runs past half of it). Only that mark
# counts (NFKC reads it as "..."), and only at the very end of the text, glued to a word at least
# this long: a model that trails off ("Rent due on the 2...", "delayed by 3…") wrote a short number
# of its own.
_CUT_MARKS: Final = ("…", "...")
CUT_WORD_MIN_CHARS: Final = 20

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
        truncated = _cut_by_cap(text, end)
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
        start = match.start()
        if kind == "number" and start and _MINUS_BEFORE.match(text, start - 1):
            # "-5°C": the sign is part of the number, so an input's "5°C" does not support it. (The
            # input's "-5" still supports "5", as every digit run of the input does: "-20%" is
            # "20% off".)
            start, written = start - 1, "-" + written
            forms = {"-" + form for form in forms}
        elif kind == "number" and _minus_word_before(text, start):
            start, written = start - len(_MINUS_WORD), text[start - len(_MINUS_WORD):start] + written
            forms = {"-" + form for form in forms}
        tokens.append(_Number(written, start, end, kind, frozenset(forms), runs, truncated, meridiem))
    return tokens


def _minus_word_before(text: str, start: int) -> bool:
    """Whether "minus " (a word of its own) comes right before ``start``."""
    begin = start - len(_MINUS_WORD)
    return begin >= 0 and text[begin:start].lower() == _MINUS_WORD and not (begin and _ALNUM_RE.match(text, begin - 1))


def _cut_by_cap(text: str, end: int) -> bool:
    """Whether the number ending at ``end`` is the end of a long word that the cap cut (_CUT_MARKS)."""
    if text[end:] not in _CUT_MARKS:
        return False
    space = text.rfind(" ", 0, end)
    return end - (space + 1) >= CUT_WORD_MIN_CHARS


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


# German writes every number under a million as one word: "zweihundertfünfzig",
# "dreitausendfünfhundert", "hundertzwanzig". The table holds 1 to 99 and the round hundreds and
# thousands; the rest is read by splitting at "tausend" and "hundert" (_german_compound).
_DE_BELOW_100: Final = {w: v for w, v in _CARDINALS_DE.items() if 1 <= v < 100 and w != "eine"}
_DE_UNITS: Final = {w: v for w, v in _DE_BELOW_100.items() if v < 10 and w != "eins"}
# Ordinal stems whose cardinal differs: "dritte" (drei), "siebte" (sieben), "achte" (acht), "erste" (eins).
_DE_ORDINAL_STEMS: Final = (("drit", "drei"), ("sieb", "sieben"), ("ach", "acht"), ("ers", "eins"))
_DE_CASE_ENDINGS: Final = ("e", "en", "er", "es", "em")


def _german_below_1000(word: str) -> int | None:
    head, scale, tail = word.partition("hundert")
    if not scale:
        return _DE_BELOW_100.get(word)
    if head and head not in _DE_UNITS:
        return None  # "jahrhundert" is a century, not a number
    hundreds = (_DE_UNITS[head] if head else 1) * 100
    tail = tail.removeprefix("und")  # "hundertundeins"
    rest = _DE_BELOW_100.get(tail) if tail else 0
    return None if rest is None else hundreds + rest


def _german_cardinal(word: str) -> int | None:
    head, scale, tail = word.partition("tausend")
    if not scale:
        return _german_below_1000(word) if "hundert" in word else None
    thousands = _german_below_1000(head) if head else 1
    tail = tail.removeprefix("und")
    rest = _german_below_1000(tail) if tail else 0
    return None if thousands is None or rest is None else thousands * 1000 + rest


def _german_compound(word: str) -> tuple[int, bool] | None:
    """A German one-word number past the table, and whether it is an ordinal ("hundertzwanzigste",
    "hundertdritte"); None when ``word`` is no such number ("Jahrhundert", "Tausende")."""
    if "hundert" not in word and "tausend" not in word:
        return None
    value = _german_cardinal(word)
    if value is not None:
        return value, False
    for ending in _DE_CASE_ENDINGS:
        stem = word.removesuffix("t" + ending)
        if stem == word:
            continue
        for candidate in (stem.removesuffix("s"), stem):
            for short, full in _DE_ORDINAL_STEMS:
                if candidate.endswith(short):
                    candidate = candidate.removesuffix(short) + full
                    break
            value = _german_cardinal(candidate)
            if value is not None:
                return value, True
    return None


def _number_word(key: str) -> int | None:
    """The value of a (lower-case) number word, or None."""
    value = _NUMBER_WORDS.get(key)
    if value is not None:
        return value
    compound = _german_compound(key)
    return compound[0] if compound else None


def _is_ordinal(key: str) -> bool:
    if key in _ORDINAL_WORDS:
        return True
    compound = _german_compound(key)
    return compound is not None and compound[1]


def _word_value(keys: Sequence[str]) -> int:
    total = current = last = 0
    for key in keys:
        value = _number_word(key) or 0
        if key == "dozen" and current:
            current *= 12  # "two dozen"
        elif value == 100 and key in _SCALES:
            current = (current or 1) * 100  # "two hundred", "deux cents"
        elif value >= 1000 and key in _SCALES:
            total += (current or 1) * value
            current = 0
        elif value == 20 and last == 4 and key.startswith("vingt"):
            current += 4 * 20 - 4  # "quatre-vingt(s)": 80
        else:
            current += value
        last = value
    return total + current


def _joins(previous: str, word: str, joiner: str) -> bool:
    """Whether ``word`` continues the number ``previous`` started (``joiner`` between them):
    "twenty five", "twenty-first", "two hundred", "thousand two", "vingt et un", "dix-sept",
    "quatre-vingt-dix", "doscientos cincuenta" (but not "two three", "first two", "twenty second"
    with a space: a 20-second delay). Nothing continues an ordinal."""
    before, value = _number_word(previous) or 0, _number_word(word) or 0
    hyphen = "-" in joiner
    if _is_ordinal(previous):
        return False
    if previous not in _SCALES and not _SCALE_JOINERS.isdisjoint(joiner.split()):
        return False
    if word in _SCALES:
        return previous not in _AMBIGUOUS_NUMBER_WORDS or previous in ("one", "un", "une", "ein", "eine", "uno", "una")
    if previous in _SCALES:
        # "two hundred fifty"; an ordinal ends the number: "hundred and first", "one hundred first".
        return value < before and (word not in _AMBIGUOUS_NUMBER_WORDS or word in _ORDINAL_WORDS)
    if before >= 100 and before % 100 == 0:
        return value < 100 and word not in _AMBIGUOUS_NUMBER_WORDS  # "doscientos cincuenta", "zweihundert elf"
    if previous == "quatre" and word.startswith("vingt"):
        return hyphen
    if previous == "dix" and 7 <= value <= 9:
        return hyphen  # "dix-sept"
    if previous in ("soixante", "vingt", "vingts") and 10 <= value <= 19:
        return hyphen or "et" in joiner.split()  # "soixante-dix", "soixante et onze", "quatre-vingt-douze"
    if not (before >= 20 and before % 10 == 0 and 1 <= value <= 9) or word == "once":
        return False
    return hyphen or word not in ("first", "second")


def _word_numbers(text: str) -> list[_Number]:
    """Numbers written in words, a run of number words being one number ("two hundred and fifty")."""
    found: list[_Number] = []
    group: list[re.Match[str]] = []

    def close() -> None:
        if not group:
            return
        keys = [m.group().lower() for m in group]
        value = _word_value(keys)
        forms = {str(value)} | ({f"{value}:00"} if value <= 24 else set())
        start = group[0].start()
        if _minus_word_before(text, start):
            start -= len(_MINUS_WORD)
            forms = {f"-{value}"}
        meridiem = _meridiem(text, group[-1].end())
        if meridiem == "pm" and value < 12:
            forms |= {str(value + 12), f"{value + 12}:00"}
        kind = "words" if len(keys) > 1 or keys[0] not in _AMBIGUOUS_NUMBER_WORDS else "ambiguous"
        found.append(_Number(text[start:group[-1].end()], start, group[-1].end(), kind,
                             frozenset(forms), meridiem=meridiem))
        group.clear()

    for match in _WORD.finditer(text):
        key = match.group().lower()
        if group and key in _JOINER_WORDS:
            continue  # "hundred and fifty", "vingt et un": the next number word decides (_NUMBER_JOINER)
        if _number_word(key) is None:
            close()
            continue
        if group:
            joiner = _NUMBER_JOINER.fullmatch(text, group[-1].end(), match.start())
            if not (joiner and _joins(group[-1].group().lower(), key, joiner.group())):
                close()
        group.append(match)
    close()
    return found


#: Number words that, alone in an input, are rarely the number: "per cent" (a percentage or a
#: coin, not 100), "mil" (also a unit), "a second time" (not 2), "returned null" (not 0).
_NOT_NUMBERS_ALONE: Final = frozenset({"cent", "cents", "mil", "second", "seconde", "segundo", "segunda", "null"})


def _source_word_forms(text: str, morning: bool = False) -> set[str]:
    """What the input's number words support: each run's value and each word's own value, except
    the words of _NOT_NUMBERS_ALONE when alone. ``morning``: only those not followed by "pm"."""
    supported: set[str] = set()
    for number in _word_numbers(text):
        keys = [w.lower() for w in _WORD.findall(number.written)
                if w.lower() not in _JOINER_WORDS and _number_word(w.lower()) is not None]  # not "minus"
        if len(keys) == 1 and keys[0] in _NOT_NUMBERS_ALONE:
            continue
        if morning and number.meridiem == "pm":
            continue
        supported |= number.forms
        for key in keys:
            value = _number_word(key) or 0
            supported |= {str(value)} | ({f"{value}:00"} if value <= 24 else set())
    return supported


def number_forms(text: str, morning: bool = False) -> set[str]:
    """Everything in ``text`` an output number may match: each token's forms, every digit run in it
    (so "1 555 123 4567" supports "555"), and numbers written as words ("two weeks" supports "2").
    ``morning``: only what is not marked "pm" (what an answer's "am" number may match)."""
    text = _number_text(text)
    return _supported_forms(text, _numeric_tokens(text), morning)


def _supported_forms(text: str, tokens: Sequence[_Number], morning: bool) -> set[str]:
    """number_forms of a normalised ``text`` whose numeric tokens are ``tokens``."""
    supported = _source_word_forms(text, morning)
    for token in tokens:
        if morning and token.meridiem == "pm":
            continue
        supported |= token.forms
        supported |= {_strip_int(run) for run in token.runs}
    return supported


def _invented_in(output: str, source: str) -> list[_Number]:
    """The unsupported numbers of ``output``, in order; both texts already normalised (so the
    source is tokenised once here, for all three of its uses)."""
    source_tokens = _numeric_tokens(source)
    supported = _supported_forms(source, source_tokens, morning=False)
    morning = _supported_forms(source, source_tokens, morning=True)
    identifiers = {f for token in source_tokens if token.kind == "identifier" for f in token.forms}
    whole = {(token.kind, token.written.lower()) for token in source_tokens}
    invented = []
    for token in _numeric_tokens(output):
        pool = identifiers if token.kind == "identifier" else morning if token.meridiem == "am" else supported
        forms = _afternoon(token.forms) if token.meridiem == "pm" and token.kind == "number" else token.forms
        if forms & pool:
            continue
        if token.truncated and any(k == token.kind and w.startswith(token.written.lower()) for k, w in whole):
            continue  # "Ref 1234567…": the start of one of the input's numbers (of its kind), cut by the cap
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
    May`` against ``14-16 May`` reports ``15``), but a dash right before a number and after no
    letter or digit is its minus sign (``-5°C`` needs a -5 in the input, not a 5; the input's
    ``-5`` still supports ``5``, as every digit run does), and so is the word ``minus`` before it
    (``minus 5``, ``minus five``). German one-word numbers are read by splitting at ``tausend``
    and ``hundert`` (``zweihundertfünfzig`` is 250); Spanish words count without their accents too. CJK characters are no letters of a
    number: ``3月14日`` holds 3 and 14, ``5,000円`` the number 5000 (not one identifier). Normalisation, so that a faithful rewrite is not
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
    ``555-0142``) or a number word of the input, cardinal or ordinal (``2`` from ``two``, ``deux``,
    ``zwei``; ``15th`` from ``fifteenth``, ``21st`` from ``twenty-first``; "per cent"
    is no 100, a lone "second" no 2, "null" no 0); a number that npud's own title cap cut
    (``Ref 1234…`` at the very end, inside a word of at least CUT_WORD_MIN_CHARS characters) may be
    the start of one of the input's numbers of its kind; any other ellipsis after a number
    (``due on the 2...``) is no cut, the number is checked as written. In the output, number words are checked like digits
    (``fifteen`` and ``fifteenth`` need a 15 in the input), except the ambiguous ones (``one``,
    ``second``, articles such as ``un``/``ein``, the ordinals of 1 to 5 and 10).
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
