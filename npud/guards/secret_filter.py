"""Secrets a memory candidate must never carry: :func:`find_secrets` (see the package's docstring
for what counts and what deliberately does not), and the secret values of a job's input that a
candidate must not copy without their key word: :func:`secret_values`, :func:`copied_secrets`."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from .text import normalise

SecretKind = Literal[
    "password", "one_time_code", "access_code", "payment_card", "iban", "api_key", "private_key", "token"
]

# CJK text has no spaces: its punctuation is given one, so that "验证码：482913，5分钟" reads as
# "验证码: 482913, 5分钟" (a code followed by ",5" would otherwise look like a decimal).
_CJK_PUNCTUATION = {ord("，"): ", ", ord("、"): ", ", ord("。"): ". ", ord("："): ": ", ord("；"): "; ",
                    ord("！"): "! ", ord("？"): "? "}
# An em dash (or a horizontal bar) is punctuation between words, never part of a value typed in:
# "My password is Hunter2Pony—don't tell" holds "Hunter2Pony". It becomes a spaced dash, which
# ends the value where normalise would have folded it into a hyphen ("Hunter2Pony-don").
_SENTENCE_DASHES = {ord("\u2014"): " - ", ord("\u2015"): " - "}


def _secret_text(text: str) -> str:
    return normalise(text.translate(_CJK_PUNCTUATION).translate(_SENTENCE_DASHES))


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
# An apostrophe inside a value ("O'Reilly2024", "Rock'n'Roll99" once normalised), but not one that
# starts an English ending: "Hunter2Pony's" is the value "Hunter2Pony", "it's" is no value (too short).
_INNER_APOSTROPHE = r"'(?!(?:s|re|ll|ve|d|t|m)(?![^\W_]))(?=[^\s\"'`])"
# A value: a quoted string (any words: 'correct horse'), or one word that is neither on the stop
# list nor a plain word that a describing word follows ("leaked in a data breach"). Each character
# of the word is one of two disjoint alternatives, so the match stays linear.
_VALUE = (
    rf"(?:(?P<q>[\"'`])(?P<quoted>[^\"'`\n]{{1,80}}?)(?P=q)"
    rf"|(?!{_STOP}(?![\w-]))(?![^\W\d_]+\s+{_alternation(_DESCRIBING)}(?![^\W_]))"
    rf"(?P<value>[^\s\"'`](?:[^\s\"'`]|{_INNER_APOSTROPHE}){{2,}}))"
)

_PASSWORD_WORD = _keywords(
    r"passwords?|passwort|passwd|pass\s?word|pwd|pw|passcode|passphrase|pass\s?phrase|mot\s+de\s+passe|mdp|"
    r"kennwort|contraseña|contrasena|clave(?:\s+de\s+acceso)?|senha|wachtwoord|has[łl]o|parola\s+d'ordine|"
    r"parola\s+chiave|lösenord(?:et)?|losenord(?:et)?|passord(?:et)?|adgangskode|kodeord|salasana|"
    r"[şs]ifre(?:si|m|niz)?|пароль|пароля|паролем|geheimzahl|geheimnummer|"
    r"pin(?:[\s-]?(?:code|number|nummer|kod))?|code\s+pin|code\s+secret|пин(?:-?код)?|"
    # A wireless network's key is its password ("wifi key", "WPA2 key", "network security key").
    r"(?:wi[\s-]?fi|wlan|wpa[23]?|wep|network|router)(?:\s+security)?\s+(?:key|passkey)",
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
# A value that mixes letters with digits or symbols, where no copula says it is the value.
_MIXED_VALUE = r"(?P<secret>(?=\S*[^\W\d_])(?=\S*[\d!#$%&*+?@^~])[^\s\"'`]{6,})"
# "password Pony!Rainbow7": no copula, but the word after it mixes letters with digits or symbols.
_PASSWORD_BARE = re.compile(rf"{_PASSWORD_WORD}{_PASSWORD_TOPIC}\s+[\"'`]?{_MIXED_VALUE}", re.IGNORECASE)
# "uses the password 'letmein'": a quoted value right after the key word is the value, any letters.
_PASSWORD_QUOTED = re.compile(
    rf"{_PASSWORD_WORD}{_PASSWORD_TOPIC}\s+(?P<q>[\"'`])(?P<quoted>[^\"'`\n]{{1,80}}?)(?P=q)", re.IGNORECASE
)
# "password, hunter22, is used everywhere": the value as an apposition between commas (mixed, as
# above: "password, however, is ..." is a sentence).
_PASSWORD_APPOSITION = re.compile(
    rf"{_PASSWORD_WORD}{_PASSWORD_TOPIC}\s*,\s*[\"'`]?(?P<secret>(?=[^\s,]*[^\W\d_])(?=[^\s,]*[\d!#$%&*+?@^~])"
    r"[^\s\"'`,]{6,})[\"'`]?\s*,",
    re.IGNORECASE,
)
# "pass: Tr0ub4dor" in a list of credentials: bare "pass" is a key word only where a field of a
# login starts (after punctuation or at the start, or glued to its "=" as in "user=bob pass=x"),
# and only with a value that mixes letters with digits or symbols ("bus pass: monthly" is not one).
_PASS_FIELD = re.compile(
    r"(?:(?:^|(?<=[,;(|/{\[\"'])|(?<=[,;(|/{\[\"'] ))pass[\"'`]?\s*[:=]\s*|(?<![^\W_])pass[:=])"
    rf"[\"'`]?{_MIXED_VALUE}",
    re.IGNORECASE,
)
# A verb that gives a password or a code its (new) value, as a whole word, then white space.
_CHANGING_VERB: Final = r"(?<![^\W_])(?:set|sets|setting|changed?|changes|changing|reset|resets|updated?|updates)\s+"
# "set POSTGRES_PASSWORD to s3cr3tPg", "changed the wifi password to Pony!7", "set the wifi password
# as BlueSky2020": the verb comes first, "to" or "as" separates. "to" also starts a purpose ("a
# password to log in"), so the value must mix letters with digits or symbols, as with _PASSWORD_BARE.
_PASSWORD_SET_TO = re.compile(
    _CHANGING_VERB
    + rf"(?:[\w'-]+\s+){{0,3}}?(?:[^\W_]+_){{0,3}}{_PASSWORD_WORD}{_PASSWORD_TOPIC}\s+(?:to|as)\s+[\"'`]?{_MIXED_VALUE}",
    re.IGNORECASE,
)
# "password is my dog's name Rex1987": the value follows a few plain words. A word mixing letters
# with digits within four words of the copula is taken for it, unless a describing word comes
# between ("is 16 characters long" has no such word, "is stored in 1Password" a describing one).
_PASSWORD_NEAR = re.compile(
    rf"{_PASSWORD_WORD}{_KEY_CLOSE}{_PASSWORD_TOPIC}{_BETWEEN}{_SEPARATOR}"
    r"(?P<between>(?:[^\W\d_][\w'-]*\s+){1,4}?)"
    r"(?P<secret>(?=[^\s\d]*\d)(?=\S*[^\W\d_])[\w!#$%&*+?@^~-]{5,})",
    re.IGNORECASE,
)
# "PIN 4821", "PIN-Code 0417", "密码 482913": digits right after the word, no copula needed.
_PIN_DIGITS = re.compile(rf"{_PASSWORD_WORD}\W{{0,3}}(?P<secret>\d{{4,8}})(?!\d)", re.IGNORECASE)
# A login written as a pair: "login: bob / hunter22", "credentials are bob:Tr0ub4dor". The second
# half must mix letters with digits or symbols ("account: work / personal" is no password).
_CREDENTIAL_PAIR = re.compile(
    r"(?<![^\W_])(?:login|logon|credentials?|creds|user(?:name)?\s*/\s*password)(?![^\W_])[\"'`]?"
    r"(?:\s*[:=]\s*|\s+(?:is|are)\s+)[^\s/:]{1,64}\s*[/:]\s*[\"'`]?"
    r"(?P<secret>(?=\S*[^\W\d_])(?=\S*[\d!#$%&*+?@^~])[^\s\"'`/]{6,})",
    re.IGNORECASE,
)
# scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s/?#@:]+:(?P<secret>[^\s/?#@]+)@[\w.-]",
                              re.IGNORECASE)

# Codes: 4 to 8 digits (or "123 456", "123-456", "4829-1357"); _CODE is not a year, _ANY_CODE may
# be one ("the door code is 1987": a copula or a colon says the number is the code).
# A dash before the code is fine after a letter ("G-482913"), not after a digit (a date or a range).
_ANY_CODE = r"(?<![\d.,:/])(?<!\d-)(?:\d{4,8}|\d{3}[\s-]\d{3}|\d{4}[\s-]\d{4})(?![\d.,:/-]\d)"
_CODE = rf"(?!(?:19|20)\d\d(?!\d)){_ANY_CODE}"
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
# The same distances, to read the code a key word names (secret_values).
_OTP_WORD_RE = re.compile(_OTP_WORD, re.IGNORECASE)
_CODE_AFTER = re.compile(rf"[^\n]{{0,40}}?(?P<secret>{_CODE})")
_CODE_BEFORE_GAP = 25
_CODE_MAX_CHARS = 9
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
_CODE_WORD = "".join(f"(?<!{word} )" for word in _NOT_SECRET_CODE) + _keywords(
    r"codes?|digicode|türcode|torcode|código|codigo|codice|kod|koden|kode|koodi|код")
# A number that counts something is a size, not a code: "the code is 2500 lines" (nor may the code
# be read as the first digits of a longer number: "25000 lines" is no "2500").
_NOT_A_COUNT = (r"(?!\d|\s*(?:lines?|loc|sloc|characters?|chars|words?|bytes?|pages?|files?|commits?|tests?|"
                r"functions?|methods?|classes|modules?|rows?|columns?|steps?|issues?|bugs?)(?![^\W_]))")
# A keypad's "#" or "*" may come before the code ("gate code is #4821", "*4821#").
_KEYPAD = r"[#*]?"
# After "to" the code may not look like a year ("migrate the code to 2024"): that reads as a
# version, an edition, a deadline. A copula or a colon (_SEPARATOR) names a year-shaped code, and so
# does a verb that changes it (_ACCESS_CODE_SET_TO).
_ACCESS_CODE = re.compile(
    _CODE_WORD
    + rf"(?:{_BETWEEN[:-1]}?(?:{_SEPARATOR}{_KEYPAD}{_ANY_CODE}|\s+to\s+{_KEYPAD}{_CODE})|\s*{_CODE}){_NOT_A_COUNT}",
    re.IGNORECASE,
)
# "changed the door code to 1987", "set the alarm code to 2580": the verb says the number is the code.
_ACCESS_CODE_SET_TO = re.compile(
    _CHANGING_VERB
    + rf"(?:[\w'-]+\s+){{0,3}}?{_CODE_WORD}\s+to\s+{_KEYPAD}{_ANY_CODE}{_NOT_A_COUNT}",
    re.IGNORECASE,
)
# "safe combination is 12-34-56"
_COMBINATION = re.compile(
    r"(?<![^\W_])(?:safe|lock|locker|padlock)\s+(?:combination|combo|code)(?![^\W_])"
    rf"{_BETWEEN}{_SEPARATOR}(?P<secret>\d{{1,3}}(?:[\s-]\d{{1,3}}){{1,4}})(?!\d)",
    re.IGNORECASE,
)
# Recovery codes of letters and digits: "backup codes are 8f3k-2m9d, 7h4j-3n8s".
_RECOVERY_CODES = re.compile(
    rf"(?<![^\W_])(?:backup|recovery)\s+codes?(?![^\W_]){_BETWEEN}{_SEPARATOR}"
    r"(?P<secret>(?=[a-z]*\d)(?=\d*[a-z])[a-z0-9]{4,}-[a-z0-9]{4,})",
    re.IGNORECASE,
)
# A card's security code: "CVV is 381", "CVC: 0417".
_CARD_SECURITY_CODE = re.compile(
    _keywords(r"cvv2?|cvc2?|cvn|card(?:'s)?\s+(?:security|verification)\s+(?:code|number)|"
              r"kartenprüfnummer|prüfnummer|"
              r"cryptogramme(?:\s+visuel)?")
    + rf"{_BETWEEN}(?:{_SEPARATOR}|\s*)(?<!\d)(?P<secret>\d{{3,4}})(?!\d)",
    re.IGNORECASE,
)

# A run of digit groups: separated by a space, a dash, a dot, a comma, an underscore or a slash
# ("4111 1111", "4111.1111", "4111,1111", "4111 1111-1111 1111"); it may follow a letter after punctuation ("No.4111",
# "Visa/4111") but not a digit (a date, a version) nor a "+" (a phone number).
_CARD_RUN = re.compile(r"(?<![^\W_])(?<!\+)(?<!\d[.,/:])\d+(?:(?:[ .,_/-]|\s-\s)\d+)*(?![^\W_])")
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
    r"(?P<secret>(?=[^\s&#]*\d)(?=[^\s&#]*[A-Za-z])[^\s&#]{8,})",
    re.IGNORECASE,
)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
# A wallet's recovery phrase is its private key: "seed phrase is abandon ability able ..." (8+ words).
_SEED_PHRASE = re.compile(
    _keywords(r"(?:seed|recovery|mnemonic|backup|secret|wallet)\s+(?:phrase|words)|mnemonic", r"助记词")
    + rf"{_BETWEEN}{_SEPARATOR}[\"'`]?(?P<secret>[^\W\d_]+(?:[\s,]+[^\W\d_]+){{7,}})",
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
    """How cards are written: one block, groups of four or of a multiple of four (4-8-4, 8-8: two
    groups read as one; the last may be shorter than four), or Amex/Diners 4-6-5 and 4-6-4. Order
    numbers like 112-4567890-1234567 are not card-shaped."""
    sizes = [len(g) for g in groups]
    if len(sizes) == 1:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    last = sizes[-1]
    return all(size % 4 == 0 for size in sizes[:-1]) and (1 <= last <= 4 or last % 4 == 0)


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


#: How many runs apart the two halves of a card written in one statement may stand ("starts with
#: 4539 1488, expires 12/27, and ends with 0343 6467"): a bound that keeps the check linear.
_HALVES_APART = 2


def _card_numbers(text: str, first_only: bool = False) -> list[str]:
    """The digits of each card number in ``text``: 13 to 19 digits in a card's layout, an issuer's
    prefix for that length, Luhn-valid; also a card written in two halves in one statement
    ("starts with 4539 1488 and ends with 0343 6467"), in either order, as :func:`cards_across`
    finds it across two statements. ``first_only`` stops at the first (a yes/no question)."""
    found: list[str] = []
    runs = _card_runs(text)
    for groups in runs:
        # A card may sit next to other numbers ("card 4111 1111 1111 1111 2027"): try every
        # contiguous run of groups.
        for start in range(len(groups)):
            for end in range(start + 1, len(groups) + 1):
                if sum(map(len, groups[start:end])) > 19:
                    break
                if _is_card(groups[start:end]):
                    found.append("".join(groups[start:end]))
                    if first_only:
                        return found
    # Whole runs only: two halves are written as two numbers, each complete.
    for i in range(len(runs)):
        for j in range(max(0, i - _HALVES_APART), min(len(runs), i + _HALVES_APART + 1)):
            if i != j and _halves_make_card(runs[i], runs[j]):
                found.append("".join([*runs[i], *runs[j]]))
                if first_only:
                    return found
    return found


def _has_card_number(text: str) -> bool:
    return bool(_card_numbers(text, first_only=True))


def _halves_make_card(head: Sequence[str], tail: Sequence[str]) -> bool:
    pieces = [*head, *tail]
    return _is_card(pieces) or (_is_card(["".join(pieces)]) and _pieces_of_four(head))


def _joins_to_card(head: Sequence[str], tail: Sequence[str]) -> bool:
    """Whether the end of ``head`` and the start of ``tail`` make a card between them."""
    for start in range(len(head)):
        for end in range(1, len(tail) + 1):
            pieces = [*head[start:], *tail[:end]]
            if sum(map(len, pieces)) > 19:
                break
            if _is_card(pieces) or (_is_card(["".join(pieces)]) and _pieces_of_four(head[start:])):
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
            if i != j and head and tail and _joins_to_card(head, tail):
                found |= {i, j}
    return found


def _pieces_of_four(head: Sequence[str]) -> bool:
    """Two halves written without inner separators ("45391488" and "03436467"): the first is a
    multiple of four digits, as a card is read out."""
    return len("".join(head)) % 4 == 0


def _ibans(text: str) -> Iterator[str]:
    """Each valid IBAN of ``text``, compact and upper-case."""
    for match in _IBAN.finditer(text):
        # The match may run on into the next word ("... 0130 00 BIC ..."): cut at the country's length.
        compact = _IBAN_SEPARATORS.sub("", match.group()).upper()
        length = _IBAN_LENGTHS.get(compact[:2])
        if length is not None and len(compact) >= length and iban_valid(compact[:length]):
            yield compact[:length]


def _has_iban(text: str) -> bool:
    return next(_ibans(text), None) is not None


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
        quoted = match.group("quoted").strip()
        return bool(quoted) and quoted.lower() not in _NOT_A_VALUE
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
    if any(_password_value(m) for m in _PASSWORD_QUOTED.finditer(text)):
        return True
    if any(_is_passphrase(m.group("phrase")) for m in _PASSPHRASE.finditer(text)):
        return True
    if any(_DESCRIBING.isdisjoint(m.group("between").lower().split()) for m in _PASSWORD_NEAR.finditer(text)):
        return True
    rules = (_PASSWORD_BARE, _PASSWORD_APPOSITION, _PASSWORD_SET_TO, _PASS_FIELD, _PIN_DIGITS, _URL_CREDENTIALS,
             _CREDENTIAL_PAIR)
    return any(rule.search(text) for rule in rules)


def _assigned_keys(text: str) -> Iterator[str]:
    """The values of ``key = value`` assignments that mix letters with digits (not URLs)."""
    for match in _KEY_ASSIGNMENT.finditer(text):
        value = match.group("value")
        if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and "://" not in value:
            yield value


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
    elif _ACCESS_CODE.search(text) or _ACCESS_CODE_SET_TO.search(text) or _COMBINATION.search(text):
        found.add("access_code")
    if _has_card_number(text) or _CARD_SECURITY_CODE.search(text):
        found.add("payment_card")
    if _has_iban(text):
        found.add("iban")
    if _KEY_PREFIXES.search(text) or _URL_KEY.search(text):
        found.add("api_key")
    elif next(_assigned_keys(text), None) is not None:
        found.add("api_key")
    if not found & {"api_key", "private_key"} and any(looks_random(p) for p in _TOKEN_PIECE.findall(text)):
        found.add("token")
    return tuple(sorted(found))


# ---------------------------------------------------------------- secret values

# A model may copy a secret away from its key word ("My wifi password is Hunter2Pony!" gives "The
# user is enjoying the music of Hunter2Pony!"): a candidate judged alone then holds nothing a rule
# recognises. So the rules also run on the job's input, once, and give the secret *values* they
# matched; a candidate holding one of them is dropped as that kind of secret.

#: Between the characters of a value, as it is retyped ("4111 1111", "Sunflower-92" as
#: "sunflower 92", "482-913"): any one of these, or none.
_VALUE_SEPARATOR = r"[\s._,-]"
# Digits are retyped in groups ("482 913", "4111-1111"), not with a decimal point or a thousands
# comma: "12.34 euros" and "1,234 steps" do not hold the code 1234.
_DIGIT_SEPARATOR = r"[\s-]"
_VALUE_SEPARATORS = re.compile(rf"{_VALUE_SEPARATOR}+")
# Quotes, brackets (CJK ones too), markdown emphasis and sentence punctuation around a value are not
# part of it ("Hunter2Pony!" at the end of a sentence, "**Hunter2Pony**" are found as "Hunter2Pony").
_VALUE_EDGES = "\"'`.,;:!?()[]{}<> *~「」『』【】〈〉《》〔〕"
# Where a value read from the input runs on into what follows it without a space: Japanese and
# Chinese after a Latin value ("パスワードはHunter2Ponyです", "「Hunter2Pony」"), the next field of a
# query or form ("password=Hunter2Pony&remember=1"). What comes before is followed too.
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_VALUE_RUN_ON = re.compile(rf"(?<=[^{_CJK}])[{_CJK}]|&[^\W\d_]\w*=")
#: A value must be specific enough that finding it elsewhere means the secret was copied, not that
#: an ordinary word or number came up: digits only, at least this many (a 3-digit CVV is not
#: followed: "123" is any number) ...
MIN_VALUE_DIGITS = 4
#: ... a word, at least this many characters and marked as made up (a digit, a symbol, or a capital
#: inside: "Hunter2Pony", "BlueSky"); a plain word ("sunshine", "Letmein") is not followed: a model
#: writes it for its own reasons, and alone it does not say that it is a password ...
MIN_VALUE_CHARS = 6
#: ... plain words, a phrase of at least this many, found whole ("correct horse battery staple").
MIN_VALUE_WORDS = 3
#: How far after a private key's header its body is read for values.
_PRIVATE_KEY_BODY = 4000
_CODE_RE = re.compile(_CODE)
_ANY_CODE_RE = re.compile(_ANY_CODE)


@dataclass(frozen=True)
class SecretValue:
    """A secret value found in a text (:func:`secret_values`): its kind and how to find it in
    another text. The value does not show in ``repr``, so it cannot reach a log by accident."""

    kind: SecretKind
    pattern: re.Pattern[str] = field(repr=False)


def _password_values(text: str) -> Iterator[str]:
    for rule in (_PASSWORD, _PASSWORD_PL, _PASSWORD_QUOTED):
        for match in rule.finditer(text):
            if _password_value(match):
                quoted = match.group("quoted")
                yield quoted if quoted is not None else match.group("value")
    for match in _PASSPHRASE.finditer(text):
        if _is_passphrase(match.group("phrase")):
            yield match.group("phrase")
    for match in _PASSWORD_NEAR.finditer(text):
        if _DESCRIBING.isdisjoint(match.group("between").lower().split()):
            yield match.group("secret")
    for rule in (_PASSWORD_BARE, _PASSWORD_APPOSITION, _PASSWORD_SET_TO, _PASS_FIELD, _PIN_DIGITS,
                 _URL_CREDENTIALS, _CREDENTIAL_PAIR):
        yield from (match.group("secret") for match in rule.finditer(text))


def _otp_codes(text: str) -> Iterator[str]:
    """For each one-time-code key word, the code it names: the first code after it (as _OTP reads
    "your verification code is 583201"), else the last one just before it ("482913 is your
    verification code"). Only one per word: "Flight LH 4821 lands at 10:40, your verification
    code is 583201" names 583201, and the flight number is no secret value."""
    for word in _OTP_WORD_RE.finditer(text):
        after = _CODE_AFTER.match(text, word.end())
        if after is not None:
            yield after.group("secret")
            continue
        start = max(0, word.start() - _CODE_BEFORE_GAP - _CODE_MAX_CHARS)
        before = [code for code in _CODE_RE.finditer(text, start, word.start())
                  if word.start() - code.end() <= _CODE_BEFORE_GAP and "\n" not in text[code.end():word.start()]]
        if before:
            yield before[-1].group()


def _code_values(text: str) -> Iterator[tuple[SecretKind, str]]:
    yield from (("one_time_code", code) for code in _otp_codes(text))
    yield from (("one_time_code", m.group("secret")) for m in _RECOVERY_CODES.finditer(text))
    for match in _SMS_CODE.finditer(text):
        yield from (("one_time_code", code) for code in _CODE_RE.findall(match.group()))
    for rule in (_ACCESS_CODE, _ACCESS_CODE_SET_TO):
        for match in rule.finditer(text):
            # The code ends the match; a number among the words before it is not the code.
            yield from (("access_code", code) for code in _ANY_CODE_RE.findall(match.group())[-1:])
    yield from (("access_code", m.group("secret")) for m in _COMBINATION.finditer(text))
    yield from (("payment_card", m.group("secret")) for m in _CARD_SECURITY_CODE.finditer(text))


def _key_values(text: str) -> Iterator[tuple[SecretKind, str]]:
    for match in _PRIVATE_KEY.finditer(text):
        body = text[match.end():match.end() + _PRIVATE_KEY_BODY]
        yield from (("private_key", piece) for piece in _TOKEN_PIECE.findall(body))
    yield from (("private_key", m.group("secret")) for m in _SEED_PHRASE.finditer(text))
    yield from (("api_key", m.group()) for m in _KEY_PREFIXES.finditer(text))
    yield from (("api_key", m.group("secret")) for m in _URL_KEY.finditer(text))
    yield from (("api_key", value) for value in _assigned_keys(text))
    yield from (("token", piece) for piece in _TOKEN_PIECE.findall(text) if looks_random(piece))


def _raw_values(text: str) -> Iterator[tuple[SecretKind, str]]:
    """Every value a rule of :func:`find_secrets` matches in ``text`` (normalised), with its kind."""
    yield from (("password", value) for value in _password_values(text))
    yield from _code_values(text)
    yield from (("payment_card", digits) for digits in _card_numbers(text))
    yield from (("iban", iban) for iban in _ibans(text))
    yield from _key_values(text)


def _made_up(word: str) -> bool:
    """A digit, a symbol, or a capital letter after the first: not a plain dictionary word."""
    return any(not c.isalpha() or c.isupper() for c in word[1:]) or not word[0].isalpha()


def _value_pattern(value: str) -> re.Pattern[str] | None:
    """How ``value`` (normalised) is found in another normalised text, whatever separators it is
    retyped with and in any case; None when it is not specific enough (MIN_VALUE_DIGITS,
    MIN_VALUE_CHARS, MIN_VALUE_WORDS) to stand for its secret anywhere."""
    pieces = _VALUE_SEPARATORS.split(value.strip(_VALUE_EDGES))
    pieces = [piece for piece in pieces if piece]
    joined = "".join(pieces)
    if not joined:
        return None
    if joined.isdigit():
        if len(joined) < MIN_VALUE_DIGITS:
            return None
        return re.compile(rf"(?<!\d){f'{_DIGIT_SEPARATOR}?'.join(joined)}(?!\d)")
    if len(pieces) > 1 and all(piece.isalpha() for piece in pieces):
        if len(pieces) < MIN_VALUE_WORDS:
            return None
        body = rf"{_VALUE_SEPARATOR}+".join(map(re.escape, pieces))
    elif len(joined) >= MIN_VALUE_CHARS and _made_up(joined):
        # An apostrophe is retyped or left out ("O'Reilly2024", "OReilly2024").
        body = f"{_VALUE_SEPARATOR}?".join("'?" if c == "'" else re.escape(c) for c in joined)
    else:
        return None
    # CJK text glues words together: "ユーザーはHunter2Ponyが好き" holds the value whole.
    return re.compile(rf"(?<![^\W_{_CJK}]){body}(?![^\W_{_CJK}])", re.IGNORECASE)


def secret_values(text: str) -> tuple[SecretValue, ...]:
    """The secret values of ``text`` that are specific enough to be looked for elsewhere
    (_value_pattern): the password after its key word, codes, card numbers, IBANs, keys,
    tokens, private keys and recovery phrases that :func:`find_secrets` recognises. Run once on a
    job's input; :func:`copied_secrets` then tells which candidates hold one of them."""
    found: dict[str, SecretValue] = {}
    for kind, whole in _raw_values(_secret_text(text)):
        # The value as read, and without what it may run on into (_VALUE_RUN_ON): both are followed.
        run_on = _VALUE_RUN_ON.search(whole)
        for value in (whole, whole[:run_on.start()]) if run_on else (whole,):
            pattern = _value_pattern(value)
            if pattern is not None and pattern.pattern not in found:
                found[pattern.pattern] = SecretValue(kind, pattern)
    return tuple(found.values())


def copied_secrets(statement: str, values: Iterable[SecretValue]) -> tuple[SecretKind, ...]:
    """The kinds of the ``values`` (from :func:`secret_values`) that ``statement`` holds, sorted,
    each once; empty when it holds none."""
    text = _secret_text(statement)
    return tuple(sorted({value.kind for value in values if value.pattern.search(text)}))
