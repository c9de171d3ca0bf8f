"""Attack review 4, secrets: memory candidates that still carry a secret past npud's filter
after the fixes of review 3. Each row is a statement a model would write as a memory candidate
and a kind of secret CONTRACT.md §10 promises to drop ("A candidate statement that holds a
password or PIN, a one-time or access code, a payment card number ... or its security code
(CVV/CVC) ... is dropped after generation, whatever the model produced").

The rows under "open findings" fail on purpose (findings, not fixes), as in review 3; the card
in two halves of one statement is fixed in the same commit as its tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from npud.guards import find_secrets
from npud.jobs import clean_candidates
from npud.testing.fake import FakeBehaviour, FakeLoader


# ---------------------------------------------------------------- a card in two halves, one statement

HALVES = [
    "The user's card starts with 4539 1488 and ends with 0343 6467.",
    "The user's card ends with 0343 6467 and starts with 4539 1488.",
    "The user's card number begins 4539 1488 0343 and ends 6467.",
    "The user's card starts with 45391488 and ends with 03436467.",
    "The user's card starts with 4539 1488, expires 12/27, and ends with 0343 6467.",
]


@pytest.mark.parametrize("statement", HALVES)
def test_a_card_in_two_halves_of_one_statement_is_dropped(statement: str) -> None:
    """Review 3 made the filter join halves split over *two* statements (cards_across); the same
    halves in *one* statement were returned whole (fixed with this test)."""
    raw = json.dumps(["The user is vegan.", statement])
    output = clean_candidates(raw, "My card is 4539 1488 0343 6467.")
    assert output.candidates == ["The user is vegan."], output.candidates
    assert output.secret_kinds == {"payment_card": 1}


def test_two_phone_numbers_in_one_statement_are_kept() -> None:
    """The join of two halves must not take two ordinary numbers for a card."""
    assert find_secrets("The user's phone numbers are 0151 2345 6789 and 0176 1234 5678.") == ()


def test_the_daemon_drops_a_card_in_two_halves(daemon_factory: Any) -> None:
    reply = json.dumps(["The user's card starts with 4539 1488 and ends with 0343 6467."])
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    result = daemon.call("extract_memory_candidates", {"input": "my card is 4539 1488 0343 6467"})["result"]
    digits = "".join(re.findall(r"\d", " ".join(result["candidates"])))
    assert "45391488" not in digits and result["candidates"] == [], result["candidates"]


# ---------------------------------------------------------------- open findings

LEAKS = [
    # A wifi network's "key" is its password (WPA key, network key): no key word matches "key".
    ("The user's wifi key is BlueSky2020.", "password"),  # wifi key
    ("The user's WPA key is BlueSky2020.", "password"),  # wifi key
    ("The user's network key: BlueSky2020", "password"),  # wifi key
    # "the password X" without a copula: only a value mixing letters with digits is taken, and a
    # quoted one is not taken at all.
    ("The user uses the password 'letmein' for everything.", "password"),  # quoted password without a copula
    ("The user's Netflix account uses the password 'sunshine'.", "password"),  # quoted password without a copula
    ("The user's password, hunter22, is used everywhere.", "password"),  # password as an apposition
    ("The user set the wifi password as BlueSky2020.", "password"),  # 'set ... password as X'
    # A door or alarm code that looks like a year is kept, while "PIN is 1987" is dropped.
    ("The user's door code is 1987.", "access_code"),  # year-shaped access code
    ("The user's alarm code is 2019.", "access_code"),  # year-shaped access code
    # CONTRACT names the security code (CVV/CVC); "card's security code" is not matched.
    ("The user's card's security code is 123.", "payment_card"),  # possessive card's security code
    # Groups of four separated by commas (CONTRACT lists spaces, dashes, dots, slashes; the issue
    # asks for "card numbers written with spaces or dashes", a model also writes commas).
    ("The user's card number is 4111,1111,1111,1111.", "payment_card"),  # comma-separated card
    # Still dropped (controls: the closest forms that work).
    ("The user's wifi password is BlueSky2020.", "password"),
    ("The user's PIN is 1987.", "password"),
    ("The user's CVV is 123.", "payment_card"),
]


@pytest.mark.parametrize(("statement", "kind"), LEAKS)
def test_a_statement_holding_a_secret_is_dropped(statement: str, kind: str) -> None:
    assert kind in find_secrets(statement), statement
    raw = json.dumps(["The user is vegan.", statement])
    assert clean_candidates(raw, "irrelevant input").candidates == ["The user is vegan."]


# ---------------------------------------------------------------- the value without its key word

def test_a_password_copied_without_its_key_word_is_dropped(daemon_factory: Any) -> None:
    """Each statement is judged alone, so a secret the model copies away from its key word passes,
    although the input names it as a password. Seen with the real SmolLM2-135M through the daemon:
    input "My SSID is HomeNet and the key is BlueSky2020. I like jazz." gave the candidate "The user
    is enjoying the music of BlueSky2020." The fake engine replays that answer for an input whose
    password the filter does recognise (find_secrets(input) == ("password",))."""
    source = "My wifi password is Hunter2Pony! and I like jazz."
    assert find_secrets(source) == ("password",)
    reply = json.dumps(["The user likes jazz.", "The user is enjoying the music of Hunter2Pony!"])
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    result = daemon.call("extract_memory_candidates", {"input": source})["result"]
    assert not any("Hunter2Pony" in c for c in result["candidates"]), result["candidates"]
