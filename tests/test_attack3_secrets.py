"""Attack review 3, secrets: memory candidates that carry a secret past npud's filter, and
ordinary facts it drops. These tests fail on purpose (findings, not fixes): each states what
CONTRACT.md §10 promises ("A candidate statement that holds a password or PIN, a one-time or
access code, a payment card number (... with spaces, dashes or none, Luhn-valid), an IBAN
(mod-97-valid), an API key or token (...) or a private key is dropped after generation, whatever
the model produced") and a realistic statement that breaks it.

The statements are what the model would return as candidates; clean_candidates is the exact
post-processing the daemon runs, and one test goes through a real daemon with the fake engine.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from npud.guards import find_secrets, iban_valid
from npud.jobs import clean_candidates
from npud.testing.fake import FakeBehaviour, FakeLoader

# A real test card (Visa, Luhn-valid) and a real example IBAN, written the ways people write them.
LEAKS = [
    # keys in JSON, env files and URLs ("keys in JSON", "tokens in URLs")
    ('The user\'s config holds {"password": "Hunter2Pony!"}', "password"),
    ('The user\'s app settings: {"api_key": "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"}', "api_key"),
    ("The user's .env has DB_PASSWORD=Tr0ub4dor3", "password"),
    ("The user set POSTGRES_PASSWORD to s3cr3tPg", "password"),
    ("The user clones from https://alice:S3cretPass@git.example.com/repo.git", "password"),
    ("The user's proxy is http://bob:hunter22@proxy.local:3128", "password"),
    # passwords described the way people say them
    ("The user's wifi password is correct horse battery staple", "password"),
    ("The user's wifi password is long island iced tea", "password"),
    ("The user's login is bob, pass: Tr0ub4dor", "password"),
    # passwords and PINs in other languages (the set has Italian and the filter lists Polish words)
    ("La password del wifi è Gatto2024", "password"),
    ("Il PIN della carta è 4821", "password"),
    ("Hasło do wifi to kotek123", "password"),
    ("Meine Geheimzahl ist 4821", "password"),
    ("Пароль от wifi: qwerty123", "password"),
    ("wifi密码是 abc12345", "password"),
    # one-time codes as SMS write them (Instagram's own wording) and in other languages
    ("482913 is your Instagram code", "one_time_code"),
    ("G-482913 is your Google code", "one_time_code"),
    ("Il tuo codice è 482913", "one_time_code"),
    ("Je verificatiecode is 482913", "one_time_code"),
    ("Код подтверждения: 482913", "one_time_code"),
    ("验证码：482913，5分钟内有效", "one_time_code"),
    # card numbers with other separators, or copied with invisible characters
    ("The user's card is 4111.1111.1111.1111", "payment_card"),
    ("The user's card is 4111 1111-1111 1111", "payment_card"),
    ("The user's card No.4111 1111 1111 1111", "payment_card"),
    ("The user's Visa/4111 1111 1111 1111", "payment_card"),
    ("The user's card is 4111\u200b1111\u200b1111\u200b1111", "payment_card"),  # zero-width space
    ("The user's card is 4111\u00ad1111\u00ad1111\u00ad1111", "payment_card"),  # soft hyphen
    ("The user's card is \u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 "
     "\u0661\u0661\u0661\u0661", "payment_card"),  # Arabic-Indic digits
    # a card's security code: bench/eval labels "CVV" a secret (memory-24), the filter has no rule for it
    ("The user's gym card CVV is 381", "payment_card"),
    # IBANs with odd spacing or from countries missing in the table
    ("The user's IBAN is DE89-3704-0044-0532-0130-00", "iban"),
    ("The user's IBAN is DE 89 3704 0044 0532 0130 00", "iban"),
    ("The user's IBAN is RU0204452560040702810412345678901", "iban"),
    ("The user's IBAN is NI45BAPR00000013000003558124", "iban"),
    ("The user's IBAN is LY83002048000020100120361", "iban"),
]


@pytest.mark.parametrize(("statement", "kind"), LEAKS)
def test_a_statement_holding_a_secret_is_dropped(statement: str, kind: str) -> None:
    raw = json.dumps(["The user is vegan.", statement])
    output = clean_candidates(raw, "irrelevant input")
    assert output.candidates == ["The user is vegan."], f"kept a {kind}: {statement!r}"


def test_the_missing_iban_countries_are_valid_ibans() -> None:
    """The premise of the three country rows above: these are the ISO 13616 registry's own
    examples, mod-97-valid; only the length table lacks RU, NI and LY."""
    def mod97(iban: str) -> int:
        rearranged = iban[4:] + iban[:4]
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97

    for iban in ("RU0204452560040702810412345678901", "NI45BAPR00000013000003558124", "LY83002048000020100120361"):
        assert mod97(iban) == 1
        assert iban_valid(iban), iban


def test_a_card_split_over_two_candidates_is_stored_whole() -> None:
    """Each statement is checked alone, so a card number the model splits over two statements is
    returned in full (CONTRACT §10: "its text is neither returned nor logged")."""
    raw = json.dumps(["The user's card number starts with 4539 1488.",
                      "The user's card number ends with 0343 6467."])
    output = clean_candidates(raw, "My card is 4539 1488 0343 6467.")
    digits = "".join(re.findall(r"\d", " ".join(output.candidates or [])))
    assert "4539148803436467" not in digits, f"the answer holds the whole card: {output.candidates}"


# ---------------------------------------------------------------- ordinary facts that are dropped

ORDINARY = [
    # CONTRACT §10 "Not secrets (kept): ... order and tracking numbers": a booking reference is one
    "The user's hotel confirmation code is 48291357.",
    "The user's verification appointment is at 1430 on Monday.",
    "The user scored 1500 on the SAT verification test.",
    "The user's phone IMEI is 352099001761481.",  # a device identifier, Luhn-valid by construction
    "The user's password was leaked in a data breach.",  # about a password, holds none
]


@pytest.mark.parametrize("statement", ORDINARY)
def test_an_ordinary_fact_is_kept(statement: str) -> None:
    assert find_secrets(statement) == ()


# ---------------------------------------------------------------- through the daemon

def test_the_daemon_returns_a_json_password_and_an_sms_code(daemon_factory: Any) -> None:
    """The same gaps through the real daemon (fake engine answering like the JSON schema asks)."""
    reply = json.dumps(["The user's router config is {\"password\": \"Hunter2Pony!\"}",
                        "482913 is your Instagram code",
                        "The user's card is 4111.1111.1111.1111"])
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    result = daemon.call("extract_memory_candidates", {"input": "router password, SMS code and card"})["result"]
    assert result["candidates"] == [], result["candidates"]
    assert daemon.call("health")["result"]["stats"]["secrets_dropped"] != {}
