"""Checks on job outputs that do not depend on the model: secrets, invented numbers, form.

Pure functions over strings (no model, no I/O, no state), used by the evaluation
(``python -m bench.quality``) and meant for the jobs' post-processing.

**Secrets** (:func:`find_secrets`) are what a memory candidate must never carry: passwords and
PINs, one-time and access codes, payment card numbers (Luhn-checked), IBANs (mod-97-checked), API
keys and tokens (known prefixes, key assignments, long high-entropy strings) and private keys. The
result names the *kind* of secret, never the secret, so it can be counted and logged safely.
The rules lean towards dropping: a memory candidate that merely looks like it holds a credential
is worth less than the harm of storing one. What deliberately does *not* count as a secret
(ordinary identifiers that notifications and memories legitimately carry): dates, times, phone
numbers (they start with ``+`` or are too short for a card), order and tracking numbers (Luhn and
card-prefix checks reject almost all of them), version strings, URLs without credentials, git
commit hashes and UUIDs (hexadecimal strings are identifiers unless a key word such as ``token:``
introduces them), masked card numbers (``**** 1234``).

**Invented numbers** (:func:`invented_numbers`): the numbers of an output that its input does not
support, after a documented normalisation (see that function).

**Form** (:func:`title_problems`, :func:`notification_problems`, :func:`summary_problems`,
:func:`candidate_problems`): the limits the job prompts state, as lists of problem codes, plus
"repetition" for the loops small models fall into (a cap on words would otherwise hide them).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Final, Literal

SecretKind = Literal[
    "password", "one_time_code", "access_code", "payment_card", "iban", "api_key", "private_key", "token"
]

#: The title prompt asks for "3 to 8 words"; 8 is the limit a title must never pass. Fewer than 2
#: words is reported too (a one-word title rarely says what the text is about), but 2 is accepted:
#: "Dentist Appointment" is a good title.
TITLE_MAX_WORDS: Final = 8
TITLE_MIN_WORDS: Final = 2
#: The notification prompt: "one short sentence of at most 20 words".
NOTIFICATION_MAX_WORDS: Final = 20
#: The summary prompt: "at most three sentences".
SUMMARY_MAX_SENTENCES: Final = 3
#: The memory prompt asks for "short standalone statements"; 25 words is generous for one fact.
CANDIDATE_MAX_WORDS: Final = 25


# ============================================================== text normalisation

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-")
_QUOTES = dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2032"), "'") | dict.fromkeys(
    map(ord, "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"), '"')


def normalise(text: str) -> str:
    """NFKC (fullwidth digits, no-break spaces), one kind of dash and quote, single spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_DASHES).translate(_QUOTES)
    return " ".join(text.split())


# ============================================================== secrets

# Longer forms first: the first alternative that matches wins ("was changed to X", not "was" + "changed").
_COPULA = (
    r"(?:(?:is|was|has\s+been)\s+(?:now\s+|still\s+)?(?:changed|set|reset|updated)\s+to|"
    r"(?:changed|set|reset|updated)\s+to|is\s+now|is\s+still|now\s+is|is|was|est|ist|lautet|es|era|é)"
)
# Words that follow "password is" without being a password ("my password is stored in ...").
_NOT_A_VALUE = frozenset("""
    the a an my your his her its our their this that these those same different not no now still
    stored saved kept written somewhere in on at under inside with without and or but too very so
    required needed mandatory optional expired expiring expires wrong incorrect invalid weak strong
    secure insecure long short changed reset updated new old correct missing forgotten lost known
    case-sensitive le la les un une des du de mon ma mes son sa ses dans sur pas toujours
    der die das ein eine mein meine dein sein ihr im in nicht noch immer sehr
    el la los las un una mi mis su sus en no muy todavía
""".split())

_PASSWORD_WORD = (
    r"(?:password|passwort|passwd|pass\s?word|pwd|pw|passcode|passphrase|pass\s?phrase|"
    r"mot\s+de\s+passe|mdp|kennwort|contraseña|contrasena|clave\s+de\s+acceso|senha|wachtwoord|"
    r"hasło|haslo|parola\s+d'ordine|pin(?:[\s-]?(?:code|number|nummer))?|code\s+pin|code\s+secret)"
)
# What follows the key word when the text is about passwords rather than holding one.
_PASSWORD_TOPIC = (
    r"(?!\s*[-\s](?:manager|managers|policy|policies|requirements?|rules?|reset|resets|change|changes|"
    r"strength|length|vault|app|hint|hints|field|prompt|protected|protection|less|expiry|rotation)\b)"
)
# "password[ for the office wifi] is|:|= VALUE", up to five words between the key word and the copula.
_PASSWORD = re.compile(
    rf"\b{_PASSWORD_WORD}\b{_PASSWORD_TOPIC}(?:\s+[\w'-]+){{0,5}}?(?:\s*[:=]\s*|\s+{_COPULA}\s*:?\s*)"
    rf"[\"'`]?(?P<value>[^\s\"'`]{{3,}})",
    re.IGNORECASE,
)
# "password Pony!Rainbow7": no copula, but the word after it mixes letters with digits or symbols.
_PASSWORD_BARE = re.compile(
    rf"\b{_PASSWORD_WORD}\b{_PASSWORD_TOPIC}\s+[\"'`]?(?=\S*[^\W\d_])(?=\S*[\d!#$%&*+?@^~])[^\s\"'`]{{6,}}",
    re.IGNORECASE,
)
# "PIN 4821", "PIN-Code 0417": digits right after the word, no copula needed.
_PIN_DIGITS = re.compile(r"\bpin(?:[\s-]?(?:code|number|nummer))?\W{0,3}\d{4,8}\b", re.IGNORECASE)

_OTP_WORD = (
    r"(?:otp|one[\s-]?time|verification|verify|2fa|two[\s-]factor|mfa|security\s+code|"
    r"confirmation\s+code|login\s+code|sign[\s-]?in\s+code|log[\s-]?in\s+code|auth(?:entication)?\s+code|"
    r"bestätigungscode|verifizierungscode|sicherheitscode|einmalcode|einmalpasswort|anmeldecode|"
    r"m?tan|pushtan|smstan|code\s+de\s+(?:vérification|verification|confirmation|sécurité|securite|connexion)|"
    r"code\s+à\s+usage\s+unique|código\s+de\s+(?:verificación|verificacion|seguridad|confirmación|confirmacion|acceso)|"
    r"codice\s+di\s+verifica)"
)
# Codes: 4 to 8 digits (or "123 456", "123-456"), not a year.
# A dash before the code is fine after a letter ("G-482913"), not after a digit (a date or a range).
_CODE = r"(?<![\d.,:/])(?<!\d-)(?!(?:19|20)\d\d(?!\d))(?:\d{4,8}|\d{3}[\s-]\d{3})(?![\d.,:/-]\d)"
_OTP = re.compile(rf"\b{_OTP_WORD}\b[^\n]{{0,40}}?{_CODE}|{_CODE}[^\n]{{0,25}}?\b{_OTP_WORD}\b", re.IGNORECASE)
# "the door code is 4821", "code: 0417", "digicode 4821"; not zip, area, error or promo codes, and
# not "code review for PR 4821" (words between "code" and the digits need a copula or a colon).
_NOT_SECRET_CODE = (
    "zip", "postal", "post", "area", "country", "error", "exit", "status", "promo", "discount", "coupon",
    "voucher", "referral", "dress", "source", "tax", "sort", "bank", "swift", "bic", "product", "item", "hs",
)
_ACCESS_CODE = re.compile(
    "".join(f"(?<!{word} )" for word in _NOT_SECRET_CODE)
    + rf"\b(?:code|digicode|türcode|torcode|código|codigo)\b"
    rf"(?:(?:\s+[\w'-]+){{0,6}}?(?:\s*[:=]\s*|\s+{_COPULA}\s*:?\s*)|\s*){_CODE}",
    re.IGNORECASE,
)

_CARD_RUN = re.compile(r"(?<![\w+.,/])\d+(?:[ -]\d+)*(?![\w])")
_CARD_FIRST_DIGITS = frozenset("23456")  # Mastercard 2/5, Amex/Diners/JCB 3, Visa 4, Discover/UnionPay/Maestro 6

# IBAN lengths by country (ISO 13616 registry); an unknown country code is not an IBAN, so that a
# word like "ab12" followed by letters is never taken for one by chance (mod 97 passes 1 in 97).
_IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,32}", re.IGNORECASE)

_KEY_PREFIXES = re.compile(
    r"""
      \bsk-(?:proj-|ant-|live-)?[A-Za-z0-9_-]{20,}        # OpenAI, Anthropic
    | \b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}          # Stripe secret and restricted keys
    | \bwhsec_[A-Za-z0-9]{16,}                            # Stripe webhook secret
    | \bgh[pousr]_[A-Za-z0-9]{30,}                        # GitHub tokens
    | \bgithub_pat_[A-Za-z0-9_]{22,}
    | \bglpat-[A-Za-z0-9_-]{20,}                          # GitLab
    | \bxox[abprs]-[A-Za-z0-9-]{10,}                      # Slack
    | \bxapp-[A-Za-z0-9-]{10,}
    | \b(?:AKIA|ASIA)[0-9A-Z]{16}\b                       # AWS access key id
    | \bAIza[0-9A-Za-z_-]{35}                             # Google API key
    | \bya29\.[0-9A-Za-z_-]{20,}                          # Google OAuth access token
    | \bhf_[A-Za-z0-9]{30,}                               # Hugging Face
    | \bnpm_[A-Za-z0-9]{36}\b                             # npm
    | \bpypi-[A-Za-z0-9_-]{50,}                           # PyPI
    | \bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}        # SendGrid
    | \beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.?[A-Za-z0-9_-]*   # JWT
    """,
    re.VERBOSE,
)
_KEY_ASSIGNMENT = re.compile(
    r"\b(?:api[\s_-]?key|api[\s_-]?token|access[\s_-]?token|auth[\s_-]?token|refresh[\s_-]?token|"
    r"bearer|secret[\s_-]?key|client[\s_-]?secret|aws_secret_access_key|private[\s_-]?token|"
    r"token|secret|clé\s+(?:d'api|api|secrète)|schlüssel|clave\s+(?:de\s+)?api)\b"
    r"(?:\s+[\w'-]+){0,3}?(?:\s*[:=]\s*|\s+(?:is|est|ist|es)\s*:?\s*|\s+)[\"'`]?(?P<value>[A-Za-z0-9_\-./+=]{16,})"
    , re.IGNORECASE,
)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_TOKEN_PIECE = re.compile(r"[A-Za-z0-9+/=]{20,}")
_HEX = re.compile(r"[0-9a-fA-F]+")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (payment cards)."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: country code, two check digits, the mod-97 check (spaces ignored)."""
    compact = candidate.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card_layout(groups: list[str]) -> bool:
    """How cards are written: one block, groups of four (the last may be shorter), or Amex/Diners
    4-6-5 and 4-6-4. Order numbers like 112-4567890-1234567 are not card-shaped."""
    sizes = [len(g) for g in groups]
    if len(sizes) == 1:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _iban_shaped_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _IBAN.finditer(text) if m.group()[:2].upper() in _IBAN_LENGTHS]


def _has_card_number(text: str) -> bool:
    """13 to 19 digits in a card's layout, one kind of separator, a card prefix, Luhn-valid."""
    # The digit groups of an IBAN ("DE89 3704 0044 0532 0130 01") are not a card, valid or not.
    ibans = _iban_shaped_spans(text)
    for match in _CARD_RUN.finditer(text):
        if any(start <= match.start() < end for start, end in ibans):
            continue
        run = match.group()
        if len(set(re.findall(r"[ -]", run))) > 1:
            continue  # "2024-05-14 10 30" style mixtures are not how cards are written
        groups = re.split(r"[ -]", run)
        # A card may sit next to other numbers ("card 4111 1111 1111 1111 2027"): try every
        # contiguous run of groups.
        for start in range(len(groups)):
            for end in range(start + 1, len(groups) + 1):
                digits = "".join(groups[start:end])
                if len(digits) > 19:
                    break
                if (len(digits) >= 13 and digits[0] in _CARD_FIRST_DIGITS and _card_layout(groups[start:end])
                        and luhn_valid(digits)):
                    return True
    return False


def _has_iban(text: str) -> bool:
    for match in _IBAN.finditer(text):
        # The match may run on into the next word ("... 0130 00 BIC ..."): cut at the country's length.
        compact = match.group().replace(" ", "").upper()
        length = _IBAN_LENGTHS.get(compact[:2])
        if length is not None and len(compact) >= length and iban_valid(compact[:length]):
            return True
    return False


def _shannon_bits(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(piece: str) -> bool:
    """A long string that is a key rather than a word, an identifier or a hash.

    Hexadecimal strings (commit hashes, checksums, UUIDs without dashes) are identifiers here;
    ordinary words, camelCase names and model names lack either the length, the mix of classes or
    the entropy of a generated secret.
    """
    if len(piece) < 20 or _HEX.fullmatch(piece):
        return False
    digits = sum(c.isdigit() for c in piece)
    upper = sum(c.isupper() for c in piece)
    lower = sum(c.islower() for c in piece)
    if digits == 0 or upper + lower == 0:
        return False
    if "/" in piece and all(len(s) <= 3 or s.isalpha() or s.isdigit() for s in piece.split("/")):
        return False  # a path ("com/org/repo/pull/482"), not a key
    mixed = digits >= 2 and upper >= 1 and lower >= 1
    if mixed and _shannon_bits(piece) >= 3.5:
        return True
    # Single-case random strings (base32, lower-case tokens) need more length to be told from words.
    return len(piece) >= 32 and digits >= 4 and _shannon_bits(piece) >= 4.0


def find_secrets(text: str) -> tuple[SecretKind, ...]:
    """The kinds of secret ``text`` contains (sorted, each once); empty when it holds none."""
    text = normalise(text)
    found: set[SecretKind] = set()
    if _PRIVATE_KEY.search(text):
        found.add("private_key")
    for match in _PASSWORD.finditer(text):
        value = match.group("value").strip(".,;:!?)(").lower()
        if len(value) >= 3 and value not in _NOT_A_VALUE:
            found.add("password")
            break
    if _PASSWORD_BARE.search(text) or _PIN_DIGITS.search(text):
        found.add("password")
    if _OTP.search(text):
        found.add("one_time_code")
    elif _ACCESS_CODE.search(text):
        found.add("access_code")
    if _has_card_number(text):
        found.add("payment_card")
    if _has_iban(text):
        found.add("iban")
    if _KEY_PREFIXES.search(text):
        found.add("api_key")
    else:
        for match in _KEY_ASSIGNMENT.finditer(text):
            value = match.group("value")
            if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and "://" not in value:
                found.add("api_key")
                break
    if not found & {"api_key", "private_key"} and any(looks_random(p) for p in _TOKEN_PIECE.findall(text)):
        found.add("token")
    return tuple(sorted(found))


# ============================================================== invented numbers

_NUMBER_WORDS: Final = {
    # en
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "hundred": 100, "thousand": 1000, "dozen": 12, "twice": 2, "noon": 12,
    "midnight": 0, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "tenth": 10,
    "once": 1, "both": 2, "pair": 2, "couple": 2,
    # fr
    "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7, "huit": 8,
    "neuf": 9, "dix": 10, "onze": 11, "douze": 12, "quinze": 15, "vingt": 20, "trente": 30, "cent": 100,
    "mille": 1000, "midi": 12, "minuit": 0, "premier": 1, "première": 1,
    # de
    "null": 0, "eins": 1, "ein": 1, "eine": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "sechs": 6,
    "sieben": 7, "acht": 8, "neun": 9, "zehn": 10, "elf": 11, "zwölf": 12, "zwanzig": 20, "dreißig": 30,
    "hundert": 100, "tausend": 1000, "mittag": 12, "erste": 1, "ersten": 1,
    # es
    "cero": 0, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7,
    "ocho": 8, "nueve": 9, "diez": 10, "doce": 12, "quince": 15, "veinte": 20, "treinta": 30,
    "cien": 100, "mil": 1000, "mediodía": 12, "primero": 1, "primera": 1,
}
# Thousands written with spaces ("1 000 000") first, then any run of digits and letters joined by
# the separators numbers use inside themselves (. , : ').
_NUMERIC = re.compile(r"\d{1,3}(?: \d{3})+(?!\d)|[^\W_]*\d[^\W_]*(?:[.,:'][^\W_]*\d[^\W_]*)*")
# Letters that may follow a number without making it an identifier: ordinals, units, times.
_SUFFIX = re.compile(
    r"(?:st|nd|rd|th|e|er|re|ème|eme|o|a|º|ª|h|am|pm|k|m|km|kg|g|mg|ml|l|cm|mm|gb|mb|kb|tb|ms|s|sec|min|"
    r"mins|hr|hrs|d|w|y|x|p|px|mbps|ghz|mhz|kw|kwh|v|mp)$",
    re.IGNORECASE,
)
_PM_AFTER = re.compile(r"\s?(?:pm|p\.m\.)", re.IGNORECASE)


# Exponents and footnote marks are not numbers of their own: "120 m²" is 120, not 1202.
_SUPERSCRIPTS = dict.fromkeys(map(ord, "\u00b9\u00b2\u00b3\u2070\u2074\u2075\u2076\u2077\u2078\u2079"), "")


def _number_text(text: str) -> str:
    return normalise(text.translate(_SUPERSCRIPTS))


def _strip_int(digits: str) -> str:
    return digits.lstrip("0") or "0"


def _decimal(whole: str, fraction: str) -> str:
    fraction = fraction.rstrip("0")
    return _strip_int(whole) + ("." + fraction if fraction else "")


def _forms(token: str, pm: bool) -> set[str]:
    """Canonical forms of one numeric token: what it could mean, so that two spellings meet.

    ``9:30``, ``09:30``, ``9h30`` and ``9.30`` share ``9:30``; ``1,000``, ``1 000`` and ``1000``
    share ``1000``; ``5.70`` and ``5,7`` share ``5.7``; leading zeros are dropped; ``3pm`` also
    means ``15`` and ``15:00``; ``9:00`` also means ``9``.
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
    if re.fullmatch(r"\d+[.,]\d+", token):
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


def _numeric_tokens(text: str) -> list[tuple[str, str, set[str], list[str]]]:
    """(as written, kind, forms, digit runs) for each number or identifier with a digit.

    kind is "number" or "identifier" (letters and several digit runs mixed: a commit hash, a
    flight number like "LH2X5"); identifiers must be copied whole.
    """
    tokens = []
    for match in _NUMERIC.finditer(text):
        written = match.group().rstrip(".,:'")
        runs = re.findall(r"\d+", written)
        if not runs:
            continue
        pm = bool(_PM_AFTER.match(text, match.end())) or written.lower().endswith("pm")
        letters = re.sub(r"[\d.,:' ]", "", written)
        core = written
        if letters:
            core = re.sub(r"^[a-z]{1,2}(?=\d)", "", written, flags=re.IGNORECASE)  # v2.1, no12, x86
            core = re.sub(r"(?<=\d)[^\W\d_]+$", lambda m: "" if _SUFFIX.fullmatch(m.group()) else m.group(), core)
            # French times: 9h30 (the "h" between digits)
            core = re.sub(r"^(\d{1,2})h(\d{2})$", r"\1:\2", core, flags=re.IGNORECASE)
        if re.search(r"[^\W\d_]", core):
            if len(runs) == 1:
                tokens.append((written, "number", {_strip_int(runs[0])}, runs))
            else:
                tokens.append((written, "identifier", {written.lower()}, runs))
            continue
        tokens.append((written, "number", _forms(core, pm), runs))
    return tokens


def _word_numbers(text: str) -> set[str]:
    values = set()
    for word in re.findall(r"[^\W\d_]+", text.lower()):
        value = _NUMBER_WORDS.get(word)
        if value is not None:
            values.update({str(value), f"{value}:00"})
    return values


def number_forms(text: str) -> set[str]:
    """Everything in ``text`` an output number may match: each token's forms, every digit run in it
    (so "1 555 123 4567" supports "555"), and numbers written as words ("two weeks" supports "2")."""
    text = _number_text(text)
    supported = _word_numbers(text)
    for _, kind, forms, runs in _numeric_tokens(text):
        supported |= forms
        supported |= {_strip_int(run) for run in runs}
    return supported


def invented_numbers(output: str, source: str) -> list[str]:
    """The numbers of ``output`` (as written) that ``source`` does not support.

    A number is a run of digits with the separators numbers carry inside (``1,000``, ``5.7``,
    ``9:30``, ``2.13.1``); dashes and slashes separate numbers, so ranges and dates are checked
    part by part (``14-15 May`` against ``14-16 May`` reports ``15``). Normalisation, so that a
    faithful rewrite is not reported: Unicode digits and dashes are folded; leading zeros are
    dropped (``09:30`` = ``9:30``, ``007`` = ``7``); thousands separators are ignored (``1,000`` =
    ``1 000`` = ``1000``); decimal comma = decimal point and trailing zeros are dropped (``5,70`` =
    ``5.7``); time separators ``:``, ``h`` and ``.`` are one (``9h30`` = ``9.30`` = ``9:30``);
    ``3pm`` supports ``15:00``; ``9:00`` and ``9`` support each other; ordinals and units are
    stripped (``14th`` = ``14``, ``5km`` = ``5``); a number in the output may be any digit run of
    the input (``555`` from ``555-0142``) or a number word (``2`` from ``two``, ``deux``, ``zwei``).
    Not normalised (these are reported): a decimal that is a different number (``5.7`` against
    ``5`` and ``7``), arithmetic (``3 days`` from ``Monday to Wednesday``), reformatted long
    numbers (``5550142`` from ``555-0142``). Identifiers with several digit runs among letters
    (commit hashes such as ``a1b2c3d``) must appear whole in the source.
    """
    output, source = _number_text(output), _number_text(source)
    supported = number_forms(source)
    source_identifiers = {f for _, kind, forms, _ in _numeric_tokens(source) if kind == "identifier" for f in forms}
    invented = []
    for written, kind, forms, _ in _numeric_tokens(output):
        pool = source_identifiers if kind == "identifier" else supported
        if not forms & pool:
            invented.append(written)
    return invented


def without_invented_numbers(text: str, source: str) -> str:
    """``text`` without the words that carry a number ``source`` does not support (words as split
    by white space, so no number is ever cut into a different one). Repeated until none is left:
    dropping a word can join two neighbours into a new number ("1 [x] 000" -> "1 000")."""
    words_ = text.split()
    while True:
        invented = set(invented_numbers(" ".join(words_), source))
        if not invented:
            return " ".join(words_)
        kept = [w for w in words_ if not any(n in _number_text(w) for n in invented)]
        if len(kept) == len(words_):  # the number spans words that hold no invented part alone
            kept = [w for w in words_ if not any(c.isdigit() for c in w)]
        words_ = kept


# ============================================================== form

_ABBREVIATIONS = frozenset("""
    dr mr mrs ms st prof inc ltd jr sr vs etc e.g i.e eg ie no nr approx ca mt ave jan feb mar apr
    jun jul aug sep sept oct nov dec a.m p.m am pm z.b bzw usw vgl mme mlle sra srta dra av fig
    """.split())
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s+\S)")


def words(text: str) -> list[str]:
    """Whitespace-separated words that contain a letter or digit ("-" and "&" are not words)."""
    return [w for w in text.split() if any(c.isalnum() for c in w)]


def _sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end that is followed by more text: . ! ? … except after
    common abbreviations ("Dr.", "e.g.", "a.m.") and single letters or digits ("J. Smith")."""
    ends = []
    for match in _SENTENCE_END.finditer(text):
        before = text[:match.start()].split()
        last = before[-1].lower().rstrip(".") if before else ""
        if match.group().startswith(".") and (last in _ABBREVIATIONS or len(last) == 1):
            continue
        ends.append(match.end())
    return ends


def sentence_count(text: str) -> int:
    text = normalise(text)
    return len(_sentence_ends(text)) + 1 if text else 0


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (runs of white space made one space, nothing else changed),
    by the rule of :func:`sentence_count`."""
    text = " ".join(text.split())
    ends = _sentence_ends(text)
    return text[:ends[0]] if ends else text


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (white space made single spaces), by the rule of
    :func:`sentence_count`."""
    text = " ".join(text.split())
    cuts = [0, *_sentence_ends(text), len(text)]
    return [text[a:b].strip() for a, b in zip(cuts, cuts[1:]) if text[a:b].strip()]


def cap_words(text: str, limit: int) -> str:
    """``text`` cut after its ``limit``-th word (words as counted by :func:`words`)."""
    kept, count = [], 0
    for token in text.split():
        if any(c.isalnum() for c in token):
            if count == limit:
                break
            count += 1
        kept.append(token)
    return " ".join(kept) if count == limit else text


def repeats_itself(text: str, times: int) -> bool:
    """A run of three words that comes back ``times`` times: the loop of a small model ("Quick,
    quick, quick, …", "Team Building Review Team Building Review"), not a repeated name."""
    tokens = ["".join(c for c in w.casefold() if c.isalnum()) for w in words(normalise(text))]
    trigrams = Counter(zip(tokens, tokens[1:], tokens[2:]))
    return any(count >= times for count in trigrams.values())


def title_problems(title: str) -> list[str]:
    if not title.strip():
        return ["empty"]
    problems = []
    count = len(words(title))
    if "\n" in title.strip():
        problems.append("multi_line")
    if count > TITLE_MAX_WORDS:
        problems.append("too_many_words")
    if count < TITLE_MIN_WORDS:
        problems.append("too_few_words")
    if repeats_itself(title, 2):
        problems.append("repetition")
    return problems


def notification_problems(text: str) -> list[str]:
    if not text.strip():
        return ["empty"]
    problems = []
    if "\n" in text.strip():
        problems.append("multi_line")
    if sentence_count(text) > 1:
        problems.append("more_than_one_sentence")
    if len(words(text)) > NOTIFICATION_MAX_WORDS:
        problems.append("too_many_words")
    if repeats_itself(text, 2):
        problems.append("repetition")
    return problems


def summary_problems(summary: str, source: str) -> list[str]:
    """Empty, longer than its input (characters, whitespace collapsed), over three sentences, or
    looping (a run of three words three times)."""
    if not summary.strip():
        return ["empty"]
    problems = []
    if len(normalise(summary)) > len(normalise(source)):
        problems.append("longer_than_input")
    if sentence_count(summary) > SUMMARY_MAX_SENTENCES:
        problems.append("too_many_sentences")
    if repeats_itself(summary, 3):
        problems.append("repetition")
    return problems


def candidate_problems(candidates: Iterable[str]) -> list[str]:
    problems = []
    for candidate in candidates:
        if not candidate.strip():
            problems.append("empty_candidate")
        elif "\n" in candidate.strip():
            problems.append("multi_line")
        elif len(words(candidate)) > CANDIDATE_MAX_WORDS:
            problems.append("too_many_words")
    return sorted(set(problems))
