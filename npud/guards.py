"""Checks on job outputs that do not depend on the model: secrets, invented numbers, form.

Pure functions over strings (no model, no I/O, no state), used by the jobs' post-processing
(``npud.jobs``) and by the evaluation (``python -m bench.quality``). Every regular expression
here is linear in the text it scans (they run on the worker thread, which holds the GIL, on inputs
of up to 6000 characters without a space).

**Normalisation before matching** (:func:`normalise`): invisible format characters (zero-width
spaces, soft hyphens, direction marks) are removed, the decimal digits of every script become
ASCII digits, then NFKC (fullwidth forms, no-break spaces, superscripts), one kind of dash and
quote, single spaces. A rule never sees ``4111\u200b1111``, ``٤١١١`` or ``ｐａｓｓｗｏｒｄ``: it
sees ``41111111``, ``4111`` and ``password``.

**Secrets** (:func:`find_secrets`) are what a memory candidate must never carry: passwords and
PINs (key words in several languages and scripts, also inside identifiers and JSON keys:
``DB_PASSWORD=``, ``{"password": ...}``; credentials in URLs; pass phrases of plain words), one-time
and access codes (including the SMS form "482913 is your Instagram code"), payment card numbers
(Luhn-checked, the issuer's prefix for the length, any of the separators people type), card
security codes (CVV), IBANs (every country of the IBAN registry, mod-97-checked), API keys and
tokens (known prefixes, key assignments, long high-entropy strings), private keys and wallet
recovery phrases. The result names the *kind* of secret, never the secret, so it can be counted
and logged safely. The rules lean towards dropping: a memory candidate that merely looks like it
holds a credential is worth less than the harm of storing one. What deliberately does *not* count
as a secret (ordinary facts that notifications and memories legitimately carry): dates, times,
phone numbers (they start with ``+`` or are too short for a card), device identifiers (an IMEI has
15 digits and passes Luhn, but the only 15-digit cards are American Express, 34 or 37), order,
tracking and booking numbers (a hotel's "confirmation code" is a booking reference; Luhn and the
issuer prefixes reject almost all order numbers), version strings, URLs without credentials, git
commit hashes and UUIDs (hexadecimal strings are identifiers unless a key word such as ``token:``
introduces them), masked card numbers (``**** 1234``), and statements *about* a password ("was
leaked in a breach", "is sixteen characters long").

**Invented numbers** (:func:`invented_numbers`): the numbers of an output, in digits or in words,
that its input does not support, after a documented normalisation (see that function).

**Form** (:func:`title_problems`, :func:`notification_problems`, :func:`summary_problems`,
:func:`candidate_problems`): the limits the job prompts state, as lists of problem codes, plus
"repetition" for the loops small models fall into (a cap on words would otherwise hide them).
Sentences are split by :func:`sentences` (abbreviations, initials, CJK full stops).
"""


from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


# ============================================================== secrets

# CJK text has no spaces: its punctuation is given one, so that "验证码：482913，5分钟" reads as
# "验证码: 482913, 5分钟" (a code followed by ",5" would otherwise look like a decimal).
_CJK_PUNCTUATION = {ord("，"): ", ", ord("、"): ", ", ord("。"): ". ", ord("："): ": ", ord("；"): "; ",
                    ord("！"): "! ", ord("？"): "? "}


def _secret_text(text: str) -> str:
    return normalise(text.translate(_CJK_PUNCTUATION))


def _keywords(latin: str, cjk: str = "") -> str:
    """Key words that may stand inside an identifier or a JSON key (``DB_PASSWORD``, ``"api_key"``:
    an underscore or a quote is a boundary) but not inside another word (``bypassword``). CJK
    words need no boundary: their script has no spaces ("wifi密码")."""
    latin_words = rf"(?<![^\W_])(?:{latin})(?![^\W_])"
    return rf"(?:{latin_words}|(?:{cjk}))" if cjk else latin_words


# The closing quote of a JSON or YAML key: {"password": "x"}.
_KEY_CLOSE = r"[\"'`]?"
# Longer forms first: the first alternative that matches wins ("was changed to X", not "was" + "changed").
_COPULA = (
    r"(?:(?:is|was|has\s+been)\s+(?:now\s+|still\s+)?(?:changed|set|reset|updated)\s+to|"
    r"(?:changed|set|reset|updated)\s+to|is\s+now|is\s+still|now\s+is|is|was|are|equals|est|ist|lautet|war|"
    r"es|era|è|é|jest|är|er|это)"
)
# Between a key word and its value: "=", ":", a copula ("is", "ist", "è", "jest", "是"), " - ".
_SEPARATOR = rf"(?:\s*[:=]\s*|\s+{_COPULA}\s*:?\s*|\s*(?:是|为|為|は)\s*|\s+-\s+)"
# Up to five words between the key word and the separator ("password for the office wifi is").
_BETWEEN = r"(?:\s+[\w'-]+){0,5}?"

# Words that follow "password is" without being a password ("my password is stored in ...").
_NOT_A_VALUE = frozenset("""
    the a an my your his her its our their this that these those same different not no now still
    stored saved kept written somewhere in on at under inside with without and or but too very so
    required needed mandatory optional expired expiring expires wrong incorrect invalid weak strong
    secure insecure long short changed reset updated new old correct missing forgotten lost known
    case-sensitive leaked compromised hacked stolen exposed breached shared reused used encrypted
    hashed protected managed generated random unique complex simple easy hard difficult unknown
    empty blank also only just probably usually always never currently due about like similar based
    being one set sent emailed guessed cracked hidden private available enabled disabled active
    le la les un une des du de mon ma mes son sa ses dans sur pas toujours
    der die das ein eine mein meine dein sein ihr im in nicht noch immer sehr
    el la los las un una mi mis su sus en no muy todavía
    il lo gli del della di non ancora sempre stata stato
    nie w na jest
    не в на это был была
""".split())
# A word followed by one of these describes the password rather than being it ("leaked in a
# breach", "sixteen characters long").
_DESCRIBING = frozenset("""
    in on at to for with by from since into onto across about after before behind under over via
    per within without during until than as characters character chars letters digits symbols
    words numbers times days weeks months years ago
""".split())
# Words that make a phrase a sentence rather than a pass phrase of plain words.
_FUNCTION_WORDS = _DESCRIBING | frozenset("""
    the a an and or but so not no too very is was be been being has have had it its this that which
    who my your his her their our because when if every each all any anyone nobody everyone someone
    enough again yet already anymore
""".split())


def _alternation(words: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_STOP = _alternation(_NOT_A_VALUE)
# A value: a quoted string (any words: 'correct horse'), or one word that is neither on the stop
# list nor a plain word that a describing word follows ("leaked in a data breach").
_VALUE = (
    rf"(?:(?P<q>[\"'`])(?P<quoted>[^\"'`\n]{{1,80}}?)(?P=q)"
    rf"|(?!{_STOP}(?![\w-]))(?![^\W\d_]+\s+{_alternation(_DESCRIBING)}(?![^\W_]))(?P<value>[^\s\"'`]{{3,}}))"
)

_PASSWORD_WORD = _keywords(
    r"passwords?|passwort|passwd|pass\s?word|pwd|pw|passcode|passphrase|pass\s?phrase|mot\s+de\s+passe|mdp|"
    r"kennwort|contraseña|contrasena|clave(?:\s+de\s+acceso)?|senha|wachtwoord|has[łl]o|parola\s+d'ordine|"
    r"parola\s+chiave|lösenord(?:et)?|losenord(?:et)?|passord(?:et)?|adgangskode|kodeord|salasana|"
    r"[şs]ifre(?:si|m|niz)?|пароль|пароля|паролем|geheimzahl|geheimnummer|"
    r"pin(?:[\s-]?(?:code|number|nummer|kod))?|code\s+pin|code\s+secret|пин(?:-?код)?",
    r"密码|密碼|口令|パスワード|暗証番号|비밀번호",
)
# What follows the key word when the text is about passwords rather than holding one.
_PASSWORD_TOPIC = (
    r"(?!\s*[-\s](?:manager|managers|policy|policies|requirements?|rules?|reset|resets|change|changes|"
    r"strength|length|vault|app|hint|hints|field|prompt|protected|protection|less|expiry|rotation|leak|"
    r"leaks|breach|hash|hashes|history|recovery|expiration|reuse)\b)"
)
_PASSWORD = re.compile(rf"{_PASSWORD_WORD}{_KEY_CLOSE}{_PASSWORD_TOPIC}{_BETWEEN}{_SEPARATOR}{_VALUE}", re.IGNORECASE)
# Polish "Hasło do wifi to kotek123": "to" is a copula only after a Polish key word.
_PASSWORD_PL = re.compile(rf"{_keywords(r'has[łl]o')}{_BETWEEN}\s+to\s*:?\s*{_VALUE}", re.IGNORECASE)
# A pass phrase of plain words: "wifi password is correct horse battery staple". Three to eight
# words to the end of the clause, none of them a function word, and the second one not on the
# stop list ("is now stored safely" is a sentence, "is long island iced tea" a pass phrase).
_PASSPHRASE = re.compile(
    rf"{_PASSWORD_WORD}{_KEY_CLOSE}{_PASSWORD_TOPIC}{_BETWEEN}\s+{_COPULA}\s+"
    r"(?P<phrase>[^\W\d_]+(?:[\s-]+[^\W\d_]+){2,7})\s*(?:[.,;!?)]|$)",
    re.IGNORECASE,
)
# "password Pony!Rainbow7": no copula, but the word after it mixes letters with digits or symbols.
_PASSWORD_BARE = re.compile(
    rf"{_PASSWORD_WORD}{_PASSWORD_TOPIC}\s+[\"'`]?(?=\S*[^\W\d_])(?=\S*[\d!#$%&*+?@^~])[^\s\"'`]{{6,}}",
    re.IGNORECASE,
)
# "pass: Tr0ub4dor" in a list of credentials: bare "pass" is a key word only where a field of a
# login starts (after punctuation or at the start, or glued to its "=" as in "user=bob pass=x"),
# and only with a value that mixes letters with digits or symbols ("bus pass: monthly" is not one).
_PASS_FIELD = re.compile(
    r"(?:(?:^|(?<=[,;(|/{\[\"'])|(?<=[,;(|/{\[\"'] ))pass[\"'`]?\s*[:=]\s*|(?<![^\W_])pass[:=])"
    r"[\"'`]?(?=\S*[^\W\d_])(?=\S*[\d!#$%&*+?@^~])[^\s\"'`]{6,}",
    re.IGNORECASE,
)
# "set POSTGRES_PASSWORD to s3cr3tPg", "changed the wifi password to Pony!7": the verb comes first,
# "to" separates. "to" also starts a purpose ("a password to log in"), so the value must mix
# letters with digits or symbols, as with _PASSWORD_BARE.
_PASSWORD_SET_TO = re.compile(
    rf"(?<![^\W_])(?:set|sets|setting|changed?|changes|changing|reset|resets|updated?|updates)\s+"
    rf"(?:[\w'-]+\s+){{0,3}}?(?:[^\W_]+_){{0,3}}{_PASSWORD_WORD}{_PASSWORD_TOPIC}\s+to\s+[\"'`]?"
    r"(?=\S*[^\W\d_])(?=\S*[\d!#$%&*+?@^~])[^\s\"'`]{6,}",
    re.IGNORECASE,
)
# "password is my dog's name Rex1987": the value follows a few plain words. A word mixing letters
# with digits within four words of the copula is taken for it, unless a describing word comes
# between ("is 16 characters long" has no such word, "is stored in 1Password" a describing one).
_PASSWORD_NEAR = re.compile(
    rf"{_PASSWORD_WORD}{_KEY_CLOSE}{_PASSWORD_TOPIC}{_BETWEEN}{_SEPARATOR}"
    r"(?P<between>(?:[^\W\d_][\w'-]*\s+){1,4}?)"
    r"(?=[^\s\d]*\d)(?=\S*[^\W\d_])[\w!#$%&*+?@^~-]{5,}",
    re.IGNORECASE,
)
# "PIN 4821", "PIN-Code 0417", "密码 482913": digits right after the word, no copula needed.
_PIN_DIGITS = re.compile(rf"{_PASSWORD_WORD}\W{{0,3}}\d{{4,8}}(?!\d)", re.IGNORECASE)
# scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s/?#@:]+:[^\s/?#@]+@[\w.-]", re.IGNORECASE)

# Codes: 4 to 8 digits (or "123 456", "123-456", "4829-1357"), not a year.
# A dash before the code is fine after a letter ("G-482913"), not after a digit (a date or a range).
_CODE = (
    r"(?<![\d.,:/])(?<!\d-)(?!(?:19|20)\d\d(?!\d))"
    r"(?:\d{4,8}|\d{3}[\s-]\d{3}|\d{4}[\s-]\d{4})(?![\d.,:/-]\d)"
)
_OTP_WORD = _keywords(
    r"otp|2fa|mfa|m?tan|pushtan|smstan|"
    r"one[\s-]?time(?:\s+(?:login|sign[\s-]?in|log[\s-]?in|security|verification))?\s+(?:code|password|passcode|pin|token|key)|"
    r"two[\s-]?factor(?:\s+(?:authentication|auth))?\s+code|"
    r"verification(?:\s+(?:code|number|pin)|\s*:)|verify\s+code|security\s+code|"
    r"(?:login|log[\s-]?in|sign[\s-]?in|auth(?:entication)?|backup|recovery|sms|text)\s+codes?|"
    r"(?:do\s+not|don't|never)\s+share|"
    r"bestätigungscode|verifizierungscode|sicherheitscode|einmalcode|einmalpasswort|anmeldecode|"
    r"code\s+de\s+(?:vérification|verification|sécurité|securite|connexion)|code\s+à\s+usage\s+unique|"
    r"código\s+de\s+(?:verificación|verificacion|verificação|verificacao|seguridad|segurança|seguranca)|"
    r"codice\s+(?:di\s+)?(?:verifica|sicurezza|otp)|verificatie\s*code|inlogcode|bevestigingscode|"
    r"kod\s+(?:weryfikacyjny|sms|jednorazowy)|do[ğg]rulama\s+kod\w*|verifieringskod|engångskod|"
    r"код\s+(?:подтверждения|проверки|из\s+смс)|одноразовый\s+код",
    r"验证码|驗證碼|校验码|动态码|認証コード|確認コード|ワンタイムパスワード|인증번호",
)
_OTP = re.compile(rf"{_OTP_WORD}[^\n]{{0,40}}?{_CODE}|{_CODE}[^\n]{{0,25}}?{_OTP_WORD}", re.IGNORECASE)
_CODE_NOUN = r"(?:code|codice|código|codigo|kod|koden|kode|pin|otp|passcode|password|token|tan)"
# How services word the SMS: "482913 is your Instagram code", "Use 482913 to log in".
_SMS_CODE = re.compile(
    rf"{_CODE}\s+(?:is|est|ist|es|è|é|to|jest|är)\s+(?:your|votre|ton|ihr|dein|deine|tu|su|il\s+tuo|seu|sua|"
    rf"twój|twoj|jouw|je|din)(?:\s+[\w'&.-]+){{0,4}}?\s+{_CODE_NOUN}(?![^\W_])"
    rf"|(?<![^\W_])(?:use|enter|utilisez|gebruik|usa|use\s+code)\s+{_CODE}\s+(?:to|for|pour|um|para|per|om)(?![^\W_])",
    re.IGNORECASE,
)
# "the door code is 4821", "code: 0417", "digicode 4821", "Il tuo codice è 482913"; not zip, area,
# error, promo or booking codes, and not "code review for PR 4821" (words between "code" and the
# digits need a copula or a colon).
_NOT_SECRET_CODE = (
    "zip", "postal", "post", "area", "country", "error", "exit", "status", "promo", "discount", "coupon",
    "voucher", "referral", "dress", "source", "tax", "sort", "bank", "swift", "bic", "product", "item", "hs",
    "confirmation", "booking", "reservation", "reference", "order", "tracking", "ticket", "flight", "qr",
    "colour", "color", "language", "airport", "course", "class",
)
_ACCESS_CODE = re.compile(
    "".join(f"(?<!{word} )" for word in _NOT_SECRET_CODE)
    + _keywords(r"codes?|digicode|türcode|torcode|código|codigo|codice|kod|koden|kode|koodi|код")
    + rf"(?:{_BETWEEN[:-1]}?(?:{_SEPARATOR}|\s+to\s+)|\s*){_CODE}",
    re.IGNORECASE,
)
# "safe combination is 12-34-56"
_COMBINATION = re.compile(
    r"(?<![^\W_])(?:safe|lock|locker|padlock)\s+(?:combination|combo|code)(?![^\W_])"
    rf"{_BETWEEN}{_SEPARATOR}\d{{1,3}}(?:[\s-]\d{{1,3}}){{1,4}}(?!\d)",
    re.IGNORECASE,
)
# Recovery codes of letters and digits: "backup codes are 8f3k-2m9d, 7h4j-3n8s".
_RECOVERY_CODES = re.compile(
    rf"(?<![^\W_])(?:backup|recovery)\s+codes?(?![^\W_]){_BETWEEN}{_SEPARATOR}"
    r"(?=[a-z]*\d)(?=\d*[a-z])[a-z0-9]{4,}-[a-z0-9]{4,}",
    re.IGNORECASE,
)
# A card's security code: "CVV is 381", "CVC: 0417".
_CARD_SECURITY_CODE = re.compile(
    _keywords(r"cvv2?|cvc2?|cvn|card\s+(?:security|verification)\s+(?:code|number)|kartenprüfnummer|prüfnummer|"
              r"cryptogramme(?:\s+visuel)?")
    + rf"{_BETWEEN}(?:{_SEPARATOR}|\s*)(?<!\d)\d{{3,4}}(?!\d)",
    re.IGNORECASE,
)

# A run of digit groups: separated by a space, a dash, a dot, an underscore or a slash ("4111 1111",
# "4111.1111", "4111 1111-1111 1111"); it may follow a letter after punctuation ("No.4111",
# "Visa/4111") but not a digit (a date, a version) nor a "+" (a phone number).
_CARD_RUN = re.compile(r"(?<![^\W_])(?<!\+)(?<!\d[.,/:])\d+(?:(?:[ ._/-]|\s-\s)\d+)*(?![^\W_])")
_CARD_GROUP_SPLIT = re.compile(r"[^\d]+")
# Device and SIM identifiers pass Luhn by construction; named as such, they are not cards.
_DEVICE_ID = re.compile(r"(?<![^\W_])(?:imei(?:sv)?|meid|iccid|serial|s/n|seriennummer)(?![^\W_])[^\d]{0,12}$",
                        re.IGNORECASE)

# IBAN lengths by country: the SWIFT IBAN registry (ISO 13616), every country it lists. An unknown
# country code is not an IBAN, so that a word like "ab12" followed by letters is never taken for
# one by chance (mod 97 passes 1 in 97).
_IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
# Compact ("DE89370400440532013000"), or the check digits then groups of four separated by a
# space, a dash or a dot ("DE89 3704 ...", "DE 89 3704 ...", "DE89-3704-..."), the last group shorter.
_IBAN = re.compile(
    r"(?<![^\W_])[A-Z]{2}(?:\d{2}[A-Z0-9]{11,30}|[ .-]?\d{2}(?:[ .-][A-Z0-9]{4}){2,7}(?:[ .-][A-Z0-9]{1,4})?)"
    r"(?![^\W_])",
    re.IGNORECASE,
)
_IBAN_SEPARATORS = re.compile(r"[ .-]")

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
    _keywords(r"api[\s_-]?key|api[\s_-]?token|access[\s_-]?token|auth[\s_-]?token|refresh[\s_-]?token|id[\s_-]?token|"
              r"bearer|secret[\s_-]?key|client[\s_-]?secret|aws_secret_access_key|private[\s_-]?token|"
              r"token|secret|clé\s+(?:d'api|api|secrète)|schlüssel|clave\s+(?:de\s+)?api")
    + r"[\"'`]?(?:\s+[\w'-]+){0,3}?(?:\s*[:=]\s*|\s+(?:is|est|ist|es|è)\s*:?\s*|\s+)[\"'`]?"
    r"(?P<value>[A-Za-z0-9_\-./+=]{16,})",
    re.IGNORECASE,
)
# Keys in a URL's query or fragment: "?key=...", "#access_token=...".
_URL_KEY = re.compile(
    r"(?<=[?&#;])(?:key|api_?key|token|access_token|id_token|auth|sig|signature|secret|client_secret)="
    r"(?=[^\s&#]*\d)(?=[^\s&#]*[A-Za-z])[^\s&#]{8,}",
    re.IGNORECASE,
)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
# A wallet's recovery phrase is its private key: "seed phrase is abandon ability able ..." (8+ words).
_SEED_PHRASE = re.compile(
    _keywords(r"(?:seed|recovery|mnemonic|backup|secret|wallet)\s+(?:phrase|words)|mnemonic", r"助记词")
    + rf"{_BETWEEN}{_SEPARATOR}[\"'`]?[^\W\d_]+(?:[\s,]+[^\W\d_]+){{7,}}",
    re.IGNORECASE,
)
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


def card_issuer_length_ok(digits: str) -> bool:
    """Whether a card issuer uses this prefix with this length (the IIN ranges of the schemes that
    issue 13 to 19 digits). 15 digits are American Express only (34, 37): an IMEI, also 15 digits
    and Luhn-valid, starts with its type allocation code (35, 86, 01 …), never 34 or 37."""
    n = len(digits)
    if not 13 <= n <= 19 or not digits.isdigit():
        return False
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if n == 15:
        return two in (34, 37)
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if 2200 <= four <= 2204:  # Mir
        return n >= 16
    if two in (36, 38, 39) or 300 <= three <= 305:  # Diners Club
        return n in (14, 16, 19)
    if 3528 <= four <= 3589:  # JCB
        return n >= 16
    if four == 6011 or 644 <= three <= 649 or two in (62, 65):  # Discover, UnionPay
        return n >= 16
    if two == 50 or 56 <= two <= 69:  # Maestro
        return True
    return False


def iban_valid(candidate: str) -> bool:
    """ISO 13616: a registry country, its length, two check digits, the mod-97 check (spaces,
    dashes and dots ignored)."""
    compact = _IBAN_SEPARATORS.sub("", candidate).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card_layout(groups: Sequence[str]) -> bool:
    """How cards are written: one block, groups of four (the last may be shorter), or Amex/Diners
    4-6-5 and 4-6-4. Order numbers like 112-4567890-1234567 are not card-shaped."""
    sizes = [len(g) for g in groups]
    if len(sizes) == 1:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _is_card(groups: Sequence[str]) -> bool:
    digits = "".join(groups)
    return card_issuer_length_ok(digits) and _card_layout(groups) and luhn_valid(digits)


def _iban_shaped_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _IBAN.finditer(text) if m.group()[:2].upper() in _IBAN_LENGTHS]


def _card_runs(text: str) -> list[list[str]]:
    """The digit groups of each run that could hold a card (not inside an IBAN, not named as a
    device identifier)."""
    ibans = _iban_shaped_spans(text)
    runs = []
    for match in _CARD_RUN.finditer(text):
        if any(start <= match.start() < end for start, end in ibans):
            continue  # the digit groups of an IBAN ("DE89 3704 0044 0532 0130 01") are not a card
        if _DEVICE_ID.search(text, max(0, match.start() - 20), match.start()):
            continue
        runs.append(_CARD_GROUP_SPLIT.split(match.group()))
    return runs


def _has_card_number(text: str) -> bool:
    """13 to 19 digits in a card's layout, an issuer's prefix for that length, Luhn-valid."""
    for groups in _card_runs(text):
        # A card may sit next to other numbers ("card 4111 1111 1111 1111 2027"): try every
        # contiguous run of groups.
        for start in range(len(groups)):
            for end in range(start + 1, len(groups) + 1):
                if sum(map(len, groups[start:end])) > 19:
                    break
                if _is_card(groups[start:end]):
                    return True
    return False


def cards_across(statements: Sequence[str]) -> set[int]:
    """The indices of statements that hold a card number between them, two at a time: one ends
    with its first digits, the other starts with the rest ("starts with 4539 1488" and "ends with
    0343 6467"), in either order. Three or more pieces are not joined."""
    groups = [[g for run in _card_runs(_secret_text(s)) for g in run] for s in statements]
    found: set[int] = set()
    for i, head in enumerate(groups):
        for j, tail in enumerate(groups):
            if i == j or not head or not tail:
                continue
            for start in range(len(head)):
                for end in range(1, len(tail) + 1):
                    pieces = head[start:] + tail[:end]
                    if sum(map(len, pieces)) > 19:
                        break
                    if _is_card(pieces) or (_is_card(["".join(pieces)]) and _pieces_of_four(head[start:])):
                        found |= {i, j}
    return found


def _pieces_of_four(head: Sequence[str]) -> bool:
    """Two halves written without inner separators ("45391488" and "03436467"): the first is a
    multiple of four digits, as a card is read out."""
    return len("".join(head)) % 4 == 0


def _has_iban(text: str) -> bool:
    for match in _IBAN.finditer(text):
        # The match may run on into the next word ("... 0130 00 BIC ..."): cut at the country's length.
        compact = _IBAN_SEPARATORS.sub("", match.group()).upper()
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


def _password_value(match: re.Match[str]) -> bool:
    if match.group("quoted") is not None:
        return bool(match.group("quoted").strip())
    value = match.group("value").strip(".,;:!?)(").lower()
    return len(value) >= 3 and value not in _NOT_A_VALUE


def _is_passphrase(phrase: str) -> bool:
    words_ = [w.lower() for w in re.split(r"[\s-]+", phrase)]
    return words_[1] not in _NOT_A_VALUE and not any(w in _FUNCTION_WORDS for w in words_)


def _has_password(text: str) -> bool:
    if any(_password_value(m) for m in _PASSWORD.finditer(text)):
        return True
    if any(_password_value(m) for m in _PASSWORD_PL.finditer(text)):
        return True
    if any(_is_passphrase(m.group("phrase")) for m in _PASSPHRASE.finditer(text)):
        return True
    if any(_DESCRIBING.isdisjoint(m.group("between").lower().split()) for m in _PASSWORD_NEAR.finditer(text)):
        return True
    return any(rule.search(text) for rule in (_PASSWORD_BARE, _PASSWORD_SET_TO, _PASS_FIELD, _PIN_DIGITS, _URL_CREDENTIALS))


def find_secrets(text: str) -> tuple[SecretKind, ...]:
    """The kinds of secret ``text`` contains (sorted, each once); empty when it holds none."""
    text = _secret_text(text)
    found: set[SecretKind] = set()
    if _PRIVATE_KEY.search(text) or _SEED_PHRASE.search(text):
        found.add("private_key")
    if _has_password(text):
        found.add("password")
    if _OTP.search(text) or _SMS_CODE.search(text) or _RECOVERY_CODES.search(text):
        found.add("one_time_code")
    elif _ACCESS_CODE.search(text) or _COMBINATION.search(text):
        found.add("access_code")
    if _has_card_number(text) or _CARD_SECURITY_CODE.search(text):
        found.add("payment_card")
    if _has_iban(text):
        found.add("iban")
    if _KEY_PREFIXES.search(text) or _URL_KEY.search(text):
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
_PM_AFTER = re.compile(r"\s?(?:pm|p\.m\.)", re.IGNORECASE)
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
                kind, forms = "number", {_strip_int(runs[0])}
            else:
                kind, forms = "identifier", {written.lower()}
        else:
            kind, forms = "number", _forms(core, pm)
        tokens.append(_Number(written, match.start(), end, kind, frozenset(forms), runs, truncated))
    return tokens


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
        if _PM_AFTER.match(text, group[-1].end()) and value < 12:
            forms |= {str(value + 12), f"{value + 12}:00"}
        kind = "words" if len(keys) > 1 or keys[0] not in _AMBIGUOUS_NUMBER_WORDS else "ambiguous"
        found.append(_Number(text[group[0].start():group[-1].end()], group[0].start(), group[-1].end(), kind,
                             frozenset(forms)))
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


def _source_word_forms(text: str) -> set[str]:
    """What the input's number words support: each run's value and each word's own value, except
    a lone "cent" after "per"/"pour" or a number (a percentage or a coin, not 100) and a lone
    "mil" (Spanish 1000, but also a unit)."""
    supported: set[str] = set()
    for number in _word_numbers(text):
        keys = [w.lower() for w in _WORD.findall(number.written)]
        if len(keys) == 1 and keys[0] in ("cent", "cents", "mil"):
            continue
        supported |= number.forms
        for key in keys:
            value = _NUMBER_WORDS[key]
            supported |= {str(value)} | ({f"{value}:00"} if value <= 24 else set())
    return supported


def number_forms(text: str) -> set[str]:
    """Everything in ``text`` an output number may match: each token's forms, every digit run in it
    (so "1 555 123 4567" supports "555"), and numbers written as words ("two weeks" supports "2")."""
    text = _number_text(text)
    supported = _source_word_forms(text)
    for token in _numeric_tokens(text):
        supported |= token.forms
        supported |= {_strip_int(run) for run in token.runs}
    return supported


def _invented_in(output: str, source: str) -> list[_Number]:
    """The unsupported numbers of ``output``, in order; both texts already normalised."""
    supported = number_forms(source)
    source_tokens = _numeric_tokens(source)
    identifiers = {f for token in source_tokens if token.kind == "identifier" for f in token.forms}
    whole = {token.written.lower() for token in source_tokens} | {run for t in source_tokens for run in t.runs}
    invented = []
    for token in _numeric_tokens(output):
        pool = identifiers if token.kind == "identifier" else supported
        if token.forms & pool:
            continue
        if token.truncated and any(w.startswith(token.written.lower()) for w in whole):
            continue  # "1234567…": the start of one of the input's numbers, marked as cut
        invented.append(token)
    invented += [n for n in _word_numbers(output) if n.kind == "words" and not n.forms & supported]
    return sorted(invented, key=lambda n: n.start)


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
    ``:``, ``h`` and ``.`` are one (``9h30`` = ``9.30`` = ``9:30``); ``3pm`` supports ``15:00``;
    ``9:00`` and ``9`` support each other; ordinals and units are stripped (``14th`` = ``14``,
    ``5km`` = ``5``); a number in the output may be any digit run of the input (``555`` from
    ``555-0142``) or a number word of the input (``2`` from ``two``, ``deux``, ``zwei``; "per cent"
    is no 100); a number the output marks as cut (``1234…``) may be the start of one of the
    input's. In the output, number words are checked like digits (``fifteen`` needs a 15 in the
    input), except the ambiguous ones (``one``, ``second``, articles such as ``un``/``ein``).
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


# ============================================================== form

# Where a full stop after a short word does not end the sentence. Titles before a name never end
# one ("Dr. Rahman"); "e.g." and "i.e." introduce what follows. The other abbreviations end a
# sentence only when a capital follows ("at 10 a.m. Bring ..." ends, "no. 5" does not), as do a
# lone digit ("room 5. Bring"; not a list marker: "Decisions: 1. Offline ...") and a lower-case
# letter; a lone capital is an initial ("J. Smith").
_NAME_TITLES = frozenset("dr mr mrs ms prof st mt mme mlle sra srta dra hr fr".split())
_INTRODUCING = frozenset("e.g i.e eg ie z.b cf vgl".split())
_ABBREVIATIONS = frozenset("""
    inc ltd jr sr vs etc no nr approx ca ave jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m
    am pm bzw usw av fig
    """.split())
# A day's number before a month is an ordinal ("am 5. Mai"), not a sentence end.
_MONTHS = frozenset("""
    januar jänner februar märz april mai juni juli august september oktober november dezember
    january february march may june july october december jan feb mar apr jun jul aug sep sept oct nov dec
    """.split())
# . ! ? … then closing quotes or brackets, before white space and more text; a full stop or a mark
# glued to the next sentence ("room 5.Bring your laptop", "moved!Bring"); CJK full stops, which
# need no space after them.
_SENTENCE_END = re.compile(
    r"[.!?…]+[\"')\]]*(?=\s+\S)"
    r"|(?<=[^\W_])[.!?]+(?=[A-Z][a-z]+\b)"
    r"|[。！？]+[」』”’）)]*(?=\s*\S)"
)
_LAST_WORD = re.compile(r"(\S+)\s*$")


def words(text: str) -> list[str]:
    """Whitespace-separated words that contain a letter or digit ("-" and "&" are not words)."""
    return [w for w in text.split() if any(c.isalnum() for c in w)]


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    if not match.group().startswith("."):
        return True
    # The word before the full stop: the text since the last space, at most 40 characters back
    # (a longer run is no abbreviation), so that every match costs constant time.
    before = _LAST_WORD.search(text, max(0, match.start() - 40), match.start())
    last = before.group(1).lower().rstrip(".") if before else ""
    following = text[match.end():match.end() + 40].split()
    next_word = following[0].strip("\"'(") if following else ""
    capital_next = next_word[:1].isupper()
    if last in _NAME_TITLES or last in _INTRODUCING:
        return False
    if len(last) == 1 and last.isalpha() and before is not None and before.group(1)[:1].isupper():
        return False  # an initial
    if last.isdigit() and len(last) <= 2 and next_word.lower().rstrip(".,") in _MONTHS:
        return False  # "am 5. Mai"
    if last.isdigit() and len(last) <= 2 and before is not None:
        # A list marker, not a number ending a sentence: "Decisions: 1. Offline mode ...", at the
        # start of the text or after another sentence's end.
        preceding = text[max(0, before.start(1) - 3):before.start(1)].rstrip()
        if not preceding or preceding[-1] in ":.!?;":
            return False
    if last in _ABBREVIATIONS or len(last) == 1:
        return capital_next
    return True


def _sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end that is followed by more text (see _SENTENCE_END and
    _ends_sentence)."""
    return [match.end() for match in _SENTENCE_END.finditer(text) if _ends_sentence(text, match)]


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
    """The loop of a small model, not a repeated name: one word three times in a row ("Quick,
    quick, quick"), or a run of three words that comes back ``times`` times ("Team Building
    Review Team Building Review")."""
    tokens = ["".join(c for c in w.casefold() if c.isalnum()) for w in words(normalise(text))]
    trigrams = Counter(zip(tokens, tokens[1:], tokens[2:]))
    if any(a == b == c for a, b, c in trigrams):
        return True
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


_SPACE_RUN = re.compile(r"\s+")


def tidy_spaces(text: str) -> str:
    """``text`` composed (NFC: "e" + combining accent is one character, as displayed), each run of
    white space made one space, or one line break where the run held one; no space at either end."""
    text = unicodedata.normalize("NFC", text).strip()
    return _SPACE_RUN.sub(lambda m: "\n" if "\n" in m.group() else " ", text)


def summary_problems(summary: str, source: str) -> list[str]:
    """Empty, longer than its input (characters as written, once its white space is tidied:
    :func:`tidy_spaces`), over three sentences, or looping (a word three times in a row, or a run
    of three words three times)."""
    if not summary.strip():
        return ["empty"]
    problems = []
    if len(tidy_spaces(summary)) > len(source):
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
