"""Attack review 5, secrets: a secret value of the input that the model copies away from its key
word (secret_values / copied_secrets, review 4's S1 fix) is missed when the input glues the value
to what follows it: the value read from the input then runs on ("Hunter2Ponyです",
"Hunter2Pony&user=bob", "**Hunter2Pony**") and is never found in a candidate that holds the
password alone. CONTRACT.md §10: "a candidate that holds one of them is dropped as that kind of
secret even without its key word".

Rows under "open findings" fail on purpose (findings, not fixes).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from npud.guards import copied_secrets, find_secrets, secret_values
from npud.jobs import clean_candidates
from npud.testing.fake import FakeBehaviour, FakeLoader

COPIES = ["The user likes Hunter2Pony.", "The user is enjoying the music of Hunter2Pony!"]

# Inputs where find_secrets sees the password, and the value runs on into the next characters.
GLUED = [
    # Japanese writes "X は Y です" without spaces: the value reads "Hunter2Ponyです".
    "パスワードはHunter2Ponyです。ジャズが好きです。",
    "パスワードは「Hunter2Pony」です。",
    "My password is 「Hunter2Pony」 and I like jazz.",
    # Chinese without punctuation after the value.
    "我的wifi密码是Hunter2Pony请记住我喜欢爵士乐",
    # Markdown emphasis, as chat text carries it.
    "My password is **Hunter2Pony** and I like jazz.",
    "My password is *Hunter2Pony*, I like jazz.",
    # A query string or a form body: the next field follows an "&".
    "login?user=bob&password=Hunter2Pony&remember=1 I like jazz.",
]


@pytest.mark.parametrize("source", GLUED)
@pytest.mark.parametrize("copy", COPIES)
def test_a_password_glued_to_what_follows_is_still_followed(source: str, copy: str) -> None:
    assert "password" in find_secrets(source)
    output = clean_candidates(json.dumps(["The user likes jazz.", copy]), source)
    assert output.candidates == ["The user likes jazz."], (source, output.candidates)
    assert output.secret_kinds == {"password": 1}


def test_a_copy_glued_to_japanese_in_the_candidate_is_found() -> None:
    """A Japanese candidate glues the copy to its particles too ("ユーザーはHunter2Ponyが好き")."""
    values = secret_values("パスワードはHunter2Ponyです。")
    assert copied_secrets("ユーザーはHunter2Ponyが好きです。", values) == ("password",)
    assert copied_secrets("ユーザーはジャズが好きです。", values) == ()


def test_the_daemon_drops_a_password_copied_from_japanese_input(daemon_factory: Any) -> None:
    source = GLUED[0]
    reply = json.dumps(["The user likes jazz.", "The user likes Hunter2Pony."])
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    result = daemon.call("extract_memory_candidates", {"input": source})["result"]
    assert result["candidates"] == ["The user likes jazz."], result["candidates"]


@pytest.mark.parametrize("candidate", [
    "The user likes Hunter2Ponies.", "The user likes jazz and ponies.", "The user was born in 2019.",
])
def test_what_is_not_the_value_is_kept(candidate: str) -> None:
    """The cut keeps the value whole: a longer word or a plain word is no copy."""
    for source in GLUED:
        assert copied_secrets(candidate, secret_values(source)) == (), (source, candidate)


# ---------------------------------------------------------------- review-5 findings, fixed in fix5

@pytest.mark.parametrize("source", [
    # An em dash glued to the value is folded to "-" and read as part of it: "Hunter2Pony-don".
    "My password is Hunter2Pony—don't tell anyone. I like jazz.",
    "My password is Hunter2Pony—I like jazz.",
])
def test_a_password_glued_to_an_em_dash_is_followed(source: str) -> None:
    assert "password" in find_secrets(source)
    output = clean_candidates(json.dumps(["The user likes jazz.", COPIES[0]]), source)
    assert output.candidates == ["The user likes jazz."], output.candidates


@pytest.mark.parametrize("statement", [
    "The user's gate code is #4821.",
    "The user's gate code is *4821#.",
])
def test_a_keypad_code_with_hash_or_star_is_a_secret(statement: str) -> None:
    """Keypads take "*" and "#": "door code 4821#" and "alarm code is 4821#" are found, a code after
    "#" or "*" is not (the code must follow the copula directly)."""
    assert "access_code" in find_secrets(statement), statement


@pytest.mark.parametrize("statement", [
    # The value stops at an apostrophe: "O" and "D" are shorter than a value, so the statement
    # holds no password for the filter, key word and all.
    "The user's wifi password is O'Reilly2024.",
    "The user's password is D'Artagnan77.",
])
def test_a_password_with_an_apostrophe_is_a_secret(statement: str) -> None:
    assert "password" in find_secrets(statement), statement


def test_a_password_with_an_apostrophe_is_followed_when_copied() -> None:
    """find_secrets sees "password is Rock" in the input, so the value followed is "Rock" (too
    short to follow); the model's copy "Rock'n'Roll99" is kept."""
    source = "My password is Rock’n’Roll99 and I like jazz."
    assert "password" in find_secrets(source)
    output = clean_candidates(json.dumps(["The user likes jazz.", "The user loves Rock’n’Roll99."]), source)
    assert output.candidates == ["The user likes jazz."], output.candidates


# ---------------------------------------------------------------- over-dropping (fixed in fix5)

def test_a_year_after_code_to_does_not_drop_every_candidate_with_that_year() -> None:
    """"code to 2024" takes the year for an access code (a year-shaped code is meant to count only
    after a copula or a colon, CONTRACT §10), and secret_values then follows it: every candidate
    that mentions 2024 is dropped, the conference as well as the migration."""
    source = "I need to migrate the code to 2024 edition before the Rust conference in 2024. I love Rust."
    facts = ["The user loves Rust.", "The user is attending the Rust conference in 2024."]
    output = clean_candidates(json.dumps(facts), source)
    assert output.candidates == facts, output.candidates


def test_a_length_in_lines_is_no_access_code() -> None:
    """"The code is 2500 lines" names a length, not a code; the number is then followed in every
    candidate."""
    source = "The code is 2500 lines and I wrote it in 2500 minutes."
    assert find_secrets(source) == ()


def test_what_an_apostrophe_ends_stays_out_of_the_value() -> None:
    """An English ending after the value is not part of it ("Hunter2Pony's"), and "it's" is no
    value at all; an inner apostrophe is ("O'Reilly2024"), also when the copy drops it."""
    assert find_secrets("My password is it's complicated.") == ()
    values = secret_values("My password is Hunter2Pony's name.")
    assert copied_secrets("The user likes Hunter2Pony.", values) == ("password",)
    values = secret_values("My wifi password is O'Reilly2024.")
    assert copied_secrets("The user reads O'Reilly2024 books.", values) == ("password",)
    assert copied_secrets("The user reads OReilly2024 books.", values) == ("password",)
    assert copied_secrets("The user reads O'Reilly books.", values) == ()


def test_a_changed_year_shaped_door_code_is_still_a_secret() -> None:
    """A verb that changes the code names it, year-shaped or not; "zip code to 1987" is no secret."""
    source = "I changed the door code to 1987 yesterday. I was born in 1990."
    assert find_secrets(source) == ("access_code",)
    output = clean_candidates(json.dumps(["The user was born in 1990.", "The user's number is 1987."]), source)
    assert output.candidates == ["The user was born in 1990."], output.candidates
    assert find_secrets("I changed the zip code to 1987.") == ()
    assert find_secrets("The door code is 25000 lines away.") == ()


@pytest.mark.parametrize("text", ["O'" * 3000, "a'" * 3000, "password is " + "a'" * 2994, "code is #" * 666,
                                  "a—" * 3000, "changed code to " * 375])
def test_the_new_value_patterns_take_a_6000_character_input(text: str) -> None:
    """Linear on an input at the size limit (functional: the suite stays fast when it is)."""
    assert isinstance(find_secrets(text), tuple)
    assert isinstance(secret_values(text), tuple)
