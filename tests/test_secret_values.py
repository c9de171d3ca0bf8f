"""A secret of the input copied into a memory candidate away from its key word (attack review 4,
S1): :func:`npud.guards.secret_values` reads the values the rules match in the input,
:func:`npud.guards.copied_secrets` finds them in a candidate, and ``clean_candidates`` drops and
counts such a candidate under the secret's kind."""

from __future__ import annotations

import json
import re

import pytest

from bench import evalset
from npud.guards import copied_secrets, find_secrets, secret_values
from npud.jobs import clean_candidates

# (input, a candidate that copies its secret without the key word, the kind it is counted under)
COPIED = [
    ("My wifi password is Hunter2Pony! and I like jazz.", "The user is enjoying the music of Hunter2Pony!",
     "password"),
    ("My wifi password is Hunter2Pony! and I like jazz.", "The user likes hunter2pony.", "password"),
    ("Wi-Fi password: Sunflower-92. I'm vegan.", "The user's favourite flower is Sunflower 92.", "password"),
    ("The WPA key is BlueSky2020, the SSID is HomeNet.", "The user's network HomeNet uses BlueSky2020.",
     "password"),
    ("My PIN is 7392 and I live in Leeds.", "The user's lucky number is 7392.", "password"),
    ("The garage door code is 0926.", "The user mentioned 09 26 twice.", "access_code"),
    ("Your verification code is 583201. I fly to Oslo on Monday.", "The user's number is 583 201.",
     "one_time_code"),
    ("My card is 4539 1488 0343 6467, expiry 09/28.", "The user's number is 4539-1488 0343-6467.",
     "payment_card"),
    ("IBAN DE89 3704 0044 0532 0130 00 for rent.", "Rent goes to DE89-3704-0044-0532-0130-00.", "iban"),
    ("token: ghp_R7kq2WzX9mN4bV8cL1pT6yH3jF5dS0aE2gU7 for CI", "CI uses ghp_R7kq2WzX9mN4bV8cL1pT6yH3jF5dS0aE2gU7.",
     "api_key"),
    ("My password is correct horse battery staple.", "The user likes the words correct horse battery staple.",
     "password"),
    ("The user changed the password to Tr0ub4dor&3 yesterday.", "The user's cat is called Tr0ub4dor&3.",
     "password"),
]


@pytest.mark.parametrize(("source", "candidate", "kind"), COPIED)
def test_a_copied_secret_value_is_dropped_and_counted_under_its_kind(source: str, candidate: str, kind: str) -> None:
    if kind in ("password", "access_code", "one_time_code"):
        assert find_secrets(candidate) == ()  # alone, it passes: no key word (cards, IBANs, keys need none)
    assert kind in copied_secrets(candidate, secret_values(source))
    output = clean_candidates(json.dumps(["The user is vegan.", candidate]), source)
    assert output.candidates == ["The user is vegan."]
    assert output.secrets_dropped == 1 and output.secret_kinds.get(kind) == 1, output.secret_kinds


# (input, a candidate that shares only ordinary words or numbers with it: kept)
KEPT = [
    # A plain word as a password is not followed: a model writes "sunshine" for its own reasons.
    ("My Netflix password is sunshine and I love the beach.", "The user loves sunshine and the beach."),
    # A 3-digit CVV is any number.
    ("My CVV is 381, I have 381 followers.", "The user has 381 followers."),
    # Digits of a code written as a decimal or with a thousands comma are another number.
    ("The door code is 1234.", "The user paid 12.34 euros."),
    ("The door code is 1234.", "The user walked 1,234 steps."),
    # A longer number that merely contains the code.
    ("The door code is 4821.", "The user's order is 148215."),
    # Ordinary words around the secret are not the secret.
    ("My wifi password is Hunter2Pony! and I like jazz.", "The user likes jazz."),
    # A statement about a password has no value.
    ("My password was leaked in a data breach last year.", "The user's data was leaked last year."),
    # Two words of a phrase are not the phrase.
    ("My password is correct horse battery staple.", "The user rides a horse called Battery."),
    # A one-time-code key word names one code: the one after it, not a number before it.
    ("Flight LH 4821 lands at 10:40, your verification code is 583201.", "The user flies LH 4821 at 10:40."),
]


@pytest.mark.parametrize(("source", "candidate"), KEPT)
def test_ordinary_words_and_numbers_of_the_input_do_not_drop_a_candidate(source: str, candidate: str) -> None:
    assert copied_secrets(candidate, secret_values(source)) == ()
    assert clean_candidates(json.dumps([candidate]), source).candidates == [candidate]


def test_a_secret_value_never_shows_in_its_repr() -> None:
    values = secret_values("My wifi password is Hunter2Pony! and my PIN is 7392.")
    assert {v.kind for v in values} == {"password"} and len(values) == 2
    assert "Hunter" not in repr(values) and "7392" not in repr(values)


def test_an_input_without_secrets_has_no_values() -> None:
    assert secret_values("Meeting moved to 14:30 in room 4821, order 112-4567890-1234567, call +49 151 2345 6789.") \
        == ()


@pytest.mark.parametrize("job", ("title", "summary", "notification"))
def test_ordinary_inputs_of_the_evaluation_set_have_no_secret_values(job: str) -> None:
    assert [item.id for item in evalset.load(job) if secret_values(item.input)] == []


# What the rules added with review 4 (wifi keys, a password without a copula, year-shaped door
# codes, "card's security code", commas in a card) must not take.
NOT_SECRETS = [
    "The user's network key is stored in the router.",
    "The user's WiFi network key is printed on the router.",
    "The user's password, however, is strong.",
    "The user's password, like the old one, is weak.",
    "The user set the password as a reminder.",
    "The user said 'password' is a bad password.",
    "The code was written in 2019.",
    "The user's zip code is 1987.",
    "The user's postcode is 2019.",
    "Their status code is 2001.",
    "The user's card's security code is on the back.",
    "The population grew to 1,234,567,890 people.",
    "Scores were 10,12,14,16,18.",
]


@pytest.mark.parametrize("statement", NOT_SECRETS)
def test_the_rules_of_review_4_keep_ordinary_statements(statement: str) -> None:
    assert find_secrets(statement) == ()


# ---------------------------------------------------------------- the evaluation set

def _statement(terms: list[list[str]], k: int) -> str:
    return "The user: " + ", ".join(term[k % len(term)] for term in terms) + "."


def test_no_expected_memory_fact_of_the_evaluation_set_is_dropped() -> None:
    """Every expected fact of every memory item, written with each of its spellings, survives the
    filter: alone (find_secrets) and against its input's secret values (copied_secrets)."""
    dropped = []
    checked = 0
    for item in evalset.load("memory_candidate"):
        values = secret_values(item.input)
        for fact in item.expected:
            for k in range(max(len(term) for term in fact)):
                statement = _statement(fact, k)
                checked += 1
                if find_secrets(statement) or copied_secrets(statement, values):
                    dropped.append((item.id, statement))
    assert checked > 100 and dropped == []


# Labels and dates next to a secret that are not its value: an expiry date, the word "CVV".
_NOT_A_VALUE = re.compile(r"\d\d/\d\d|[A-Z ]+")


def test_every_secret_the_evaluation_set_forbids_is_dropped_when_copied_alone() -> None:
    """The other side: each secret an item forbids, copied without its key word, is dropped."""
    missed = []
    for item in evalset.load("memory_candidate"):
        values = secret_values(item.input)
        for entry in item.forbidden:
            if entry.kind != "secret" or all(_NOT_A_VALUE.fullmatch(term[0]) for term in entry.terms):
                continue
            statement = "The user mentioned " + " ".join(term[0] for term in entry.terms) + " today."
            if not (find_secrets(statement) or copied_secrets(statement, values)):
                missed.append((item.id, statement))
    assert missed == []
