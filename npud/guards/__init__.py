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
and logged safely. A model may also copy a secret of its input away from its key word ("The user
enjoys the music of Hunter2Pony!"): :func:`secret_values` reads the values the rules match in the
input (the password after its key word, codes, cards, IBANs, keys, tokens) and
:func:`copied_secrets` finds them in a candidate, retyped with other separators or in another case.
Only specific values are followed: at least 4 digits, a made-up word of at least 6 characters (a
digit, a symbol or an inner capital), or a phrase of at least 3 plain words; a plain word such as
"sunshine" or a 3-digit CVV would make ordinary candidates drop.
The rules lean towards dropping: a memory candidate that merely looks like it
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

from .form import (
    CANDIDATE_MAX_WORDS,
    NOTIFICATION_MAX_WORDS,
    SUMMARY_MAX_SENTENCES,
    TITLE_MAX_WORDS,
    TITLE_MIN_WORDS,
    candidate_problems,
    cap_words,
    first_sentence,
    first_sentences,
    notification_problems,
    repeats_itself,
    sentence_count,
    sentences,
    summary_problems,
    tidy_spaces,
    title_problems,
    words,
)
from .invented import invented_numbers, number_forms, without_invented_numbers
from .secret_filter import (
    SecretKind,
    SecretValue,
    cards_across,
    copied_secrets,
    find_secrets,
    iban_valid,
    looks_random,
    luhn_valid,
    secret_values,
)
from .text import normalise

__all__ = [
    "CANDIDATE_MAX_WORDS", "NOTIFICATION_MAX_WORDS", "SUMMARY_MAX_SENTENCES", "TITLE_MAX_WORDS", "TITLE_MIN_WORDS",
    "SecretKind", "SecretValue", "candidate_problems", "cap_words", "cards_across", "copied_secrets", "find_secrets",
    "first_sentence", "first_sentences",
    "iban_valid", "invented_numbers", "looks_random", "luhn_valid", "normalise", "notification_problems",
    "number_forms", "repeats_itself", "secret_values", "sentence_count", "sentences", "summary_problems", "tidy_spaces",
    "title_problems", "without_invented_numbers", "words",
]
