"""Post-processing tables: whatever the model emits, the form of each job's output holds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from npud.jobs import JOBS, TITLE_MAX_CHARS, clean_candidates, clean_notification, clean_summary, clean_title

#: An input without numbers, for the form tables (the number guarantee has its own tests below).
SOURCE = "Some words about a meeting, with nothing to count."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Debugging CI Failures", "Debugging CI Failures"),
        ('"Debugging CI Failures"', "Debugging CI Failures"),
        ("Title: Debugging CI Failures.", "Debugging CI Failures"),
        ("**Debugging CI**\nThis conversation is about CI.", "Debugging CI"),
        ("\n\n  “Quoted Title”  \n", "Quoted Title"),
        ("# Heading Title", "Heading Title"),
        ("Tips for a Quicker, Smarter, and", "Tips for a Quicker, Smarter"),  # cut by the token limit
        ("Fixing the Build of", "Fixing the Build"),
        ("And", "And"),  # never emptied
        ("", ""),
    ],
)
def test_title(raw: str, expected: str) -> None:
    assert clean_title(raw, SOURCE).text == expected


def test_title_is_capped_at_a_word_boundary() -> None:
    raw = " ".join(f"Extraordinarily{chr(97 + i % 26)}" for i in range(40))
    title = clean_title(raw, SOURCE).text
    assert len(title) <= TITLE_MAX_CHARS < len(" ".join(raw.split()[:8])) and "\n" not in title
    assert title.split() == raw.split()[:len(title.split())]  # whole words


def test_notification_is_one_sentence_on_one_line() -> None:
    assert clean_notification("Build passed. Deploy starts at 10.\nMore text", SOURCE).text == "Build passed."
    assert clean_notification("Notification: The meeting moved to Friday!", SOURCE).text == "The meeting moved to Friday!"
    assert clean_notification("No final punctuation", SOURCE).text == "No final punctuation"


def test_summary_keeps_text_and_drops_label() -> None:
    assert clean_summary("Summary: Two sentences. Here.\n", SOURCE).text == "Two sentences. Here."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("- The user is vegetarian.\n- The user lives in Lyon.", ["The user is vegetarian.", "The user lives in Lyon."]),
        ('{"candidates": ["Likes tea", "Has a cat"]}', ["Likes tea", "Has a cat"]),
        ('Sure! ["Likes tea"] hope that helps', ["Likes tea"]),
        ("1. First fact\n2) Second fact\n* Third fact", ["First fact", "Second fact", "Third fact"]),
        ("- none", []),
        ("- dup\n- dup", ["dup"]),
        ("I could not find anything.", []),
        ('{"candidates": [1, null, {"x": 2}]', []),  # malformed JSON: empty, no exception
        ('["Likes tea", "Has a c', ["Likes tea"]),  # an array cut by the token limit: its complete strings
        ('[\n  "Likes \\"green\\" tea",\n  "Has', ['Likes "green" tea']),
        ("[1, 2", []),
        ('{"candidates": "not a list"}', []),
        ("", []),
        ("- " + "x" * 500, []),  # too long to be a short statement
    ],
)
def test_candidates(raw: str, expected: list[str]) -> None:
    output = clean_candidates(raw, SOURCE)
    assert output.candidates == expected
    assert output.text == "\n".join(expected)


def test_candidates_are_capped() -> None:
    raw = "\n".join(f"- fact number {i}" for i in range(30))
    assert len(clean_candidates(raw, SOURCE).candidates or []) == 8


def test_table_is_complete_and_bounded() -> None:
    assert set(JOBS) == {"title", "summary", "notification", "memory_candidate"}
    for spec in JOBS.values():
        assert 1 <= spec.default_max_new_tokens <= spec.max_new_tokens <= 256
        messages = spec.messages("USER TEXT")
        assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": "USER TEXT"}
        roles = [m["role"] for m in messages[1:-1]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_title_is_capped_at_the_prompts_word_limit() -> None:
    raw = "Exciting plans ahead! Team Planning Offsite to Barcelona Next Wednesday, April"
    assert clean_title(raw, SOURCE).text == "Exciting plans ahead! Team Planning Offsite to Barcelona"
    assert clean_title("Notes on the Offsite for the Team in Barcelona and", SOURCE).text == (
        "Notes on the Offsite for the Team")
    assert clean_title("Budget - Q3 - Final & Approved - Numbers", "the Q3 budget").text == (
        "Budget - Q3 - Final & Approved - Numbers")


def test_notification_keeps_abbreviations_and_its_word_limit() -> None:
    assert clean_notification("Your appointment with Dr. Rahman is at 10 a.m. today. Bring ID.",
                              "Reminder: Dr. Rahman, 10 a.m. today").text == (
        "Your appointment with Dr. Rahman is at 10 a.m. today.")
    long = ("The dentist office on Queen Street has a dentist for every few minutes away from the main office "
            "of the dentist today.")
    capped = clean_notification(long, SOURCE).text  # cut after 20 words, then the dangling "of the" goes
    assert capped == "The dentist office on Queen Street has a dentist for every few minutes away from the main office"
    assert len(capped.split()) <= 20
    flight = "Flight LH 1234 Frankfurt–Lisbon is delayed."
    assert clean_notification(flight, "LH 1234 FRA-LIS: delayed by 45 min").text == flight


@pytest.mark.parametrize(
    ("raw", "kept", "dropped"),
    [
        ("- The user is vegan.\n- The user's Wi-Fi password is Sunflower-92.", ["The user is vegan."], 1),
        ("- The user's card is 4539 1488 0343 6467.\n- The user's card is 4539-1488-0343-6467.\n- Lives in Rome.",
         ["Lives in Rome."], 2),
        ('["Likes tea", "IBAN DE89 3704 0044 0532 0130 00", "Token ghp_R7kq2WzX9mN4bV8cL1pT6yH3jF5dS0aE2gU7"]',
         ["Likes tea"], 2),
        ("- The door code is 24871.\n- The door code is 24871.", [], 1),
        ("- The user's card ends in 6467.\n- The user changed their password.",
         ["The user's card ends in 6467.", "The user changed their password."], 0),
    ],
)
def test_candidates_holding_secrets_are_dropped_and_counted(raw: str, kept: list[str], dropped: int) -> None:
    output = clean_candidates(raw, SOURCE)
    assert output.candidates == kept and output.text == "\n".join(kept)
    assert output.secrets_dropped == dropped


def test_secrets_do_not_take_candidate_slots() -> None:
    raw = "\n".join([f"- pw: Secret{i}x!" for i in range(10)] + [f"- fact number {i}" for i in range(10)])
    output = clean_candidates(raw, SOURCE)
    assert output.candidates == [f"fact number {i}" for i in range(8)] and output.secrets_dropped == 10


# ---------------------------------------------------------------- no invented numbers (titles, notifications)

from hypothesis import given, settings, strategies as st  # noqa: E402

from npud import guards  # noqa: E402


@pytest.mark.parametrize(("clean", "raw", "source", "expected", "fallback"), [
    # Kept: every number is the input's (in another spelling too).
    (clean_notification, "Standup moved to 09:30 on the 14th.", "We moved the standup to 9:30 on 14 May.",
     "Standup moved to 09:30 on the 14th.", None),
    # Replaced by the input's own first sentence, in the job's form: the model made "15" up.
    (clean_notification, "The talk moved to 14-15 May.",
     "Conference update: the talk moved to 14-16 May. Slides are due Friday.",
     "Conference update: the talk moved to 14-16 May.", "invented_number"),
    (clean_notification, "Alice merged pull request #482 fixing the race.",
     "GitHub Actions: workflow 'CI' failed on branch main (commit 3f9a2c1 by dmitri). Job 'test (3.12)' failed "
     "at step 'Run pytest': 2 failed, 418 passed in 4m 12s.",
     "GitHub Actions: workflow 'CI' failed on branch main (commit 3f9a2c1 by dmitri).", "invented_number"),
    (clean_title, "Car Crash: 10pm to 12pm, 2pm to 4am",
     "Car: MOT due on 18 April, rear left tyre losing pressure, book a service at Kwik Fit.",
     "Car: MOT due on 18 April", "invented_number"),
    (clean_title, "Quick, quick, quick, quick: pick up a delivery",
     "Your parcel from Zalando could not be delivered today. Pick it up at the post office.",
     "Your parcel from Zalando could not be delivered", "repetition"),
    (clean_title, "Migrating Postgres From 12 To 16", "I spent the weekend migrating our Postgres database from 12 "
     "to 16.", "Migrating Postgres From 12 To 16", None),
])
def test_a_made_up_number_replaces_the_answer_with_the_extractive_one(
        clean: Any, raw: str, source: str, expected: str, fallback: str | None) -> None:
    output = clean(raw, source)
    assert (output.text, output.fallback) == (expected, fallback)
    assert guards.invented_numbers(output.text, source) == []


def test_the_extractive_answer_is_cut_to_the_form_without_making_a_number() -> None:
    # The input's first sentence is over 20 words; a cut inside "1 000 000" would change the number.
    source = ("Payroll: " + "the transfer of " * 5 + "1 000 000 EUR to the account was approved today.")
    output = clean_notification("Payroll sent 2 000 000 EUR.", source)
    assert output.fallback == "invented_number" and guards.invented_numbers(output.text, source) == []
    assert len(guards.words(output.text)) <= guards.NOTIFICATION_MAX_WORDS


def test_a_number_cut_by_the_length_limit_is_marked_as_cut() -> None:
    """The title's 80-character cap cuts inside a long enough word: the cut is marked with "…",
    so the reference reads as cut short, not as a different number, and the guard accepts it as
    the start of the input's."""
    source = "Ref " + "1234567890" * 10 + " is the payment reference for the invoice."
    output = clean_title("Invoice 99 Reference", source)
    assert output.fallback == "invented_number"
    assert output.text == "Ref " + ("1234567890" * 10)[:75] + "…" and len(output.text) == TITLE_MAX_CHARS
    assert guards.invented_numbers(output.text, source) == []
    # Without the mark it would be a different number.
    assert guards.invented_numbers(output.text.rstrip("…"), source) != []


@pytest.mark.parametrize(("text", "source", "expected"), [
    ("Meet at 10 in room 99", "Meet at 10", "Meet at 10 in room"),
    ("Version 2.13.7 is out", "version 2.13.1", "Version is out"),
    ("1 x 000 items", "1 item", "1 x items"),
    ("Call 555-0199 now", "call 555-0142", "Call now"),
])
def test_without_invented_numbers_drops_whole_words(text: str, source: str, expected: str) -> None:
    assert guards.without_invented_numbers(text, source) == expected


_NUMBERISH = st.text(alphabet="0123456789 .,:-/#%abcxyz\n", max_size=120)


@settings(max_examples=300, deadline=None)
@given(raw=_NUMBERISH, source=_NUMBERISH, filler=st.sampled_from(["", "The meeting was moved. ", "Paid "]))
def test_no_answer_ever_holds_a_number_its_input_lacks(raw: str, source: str, filler: str) -> None:
    """Whatever the model writes and whatever the input: by construction, not by luck."""
    for clean in (clean_title, clean_notification):
        text = clean(filler + raw, source).text
        assert guards.invented_numbers(text, source) == [], (clean.__name__, raw, source, text)


# ---------------------------------------------------------------- summary form

LETTER = ("The landlord wrote that the water will be shut off on Tuesday between 9:00 and 13:00 while the "
          "pipes in the basement are replaced. Residents should fill a few bottles in advance.")


@pytest.mark.parametrize(("raw", "source", "expected", "fallback"), [
    ("Water off Tuesday 9:00-13:00.", LETTER, "Water off Tuesday 9:00-13:00.", None),
    # Over three sentences: the first three.
    ("One. Two. Three. Four. Five.", LETTER, "One. Two. Three.", None),
    # A loop: the repeated sentence goes first, then the limit.
    ("Water is off. Water is off. Water is off. Bring bottles. Done.", LETTER,
     "Water is off. Bring bottles. Done.", None),
    # Longer than the input: whole sentences dropped from the end until it fits.
    ("Pay 40 EUR by Friday to Ana. The money is for the shared dinner we had last week at Luigi's.",
     "Pay Ana 40 EUR by Friday for dinner.", "Pay 40 EUR by Friday to Ana.", None),
    # Even the first sentence is longer: the input is its own summary.
    ("The user has been asked to pay the amount of forty euros to Ana before Friday.",
     "Pay Ana 40 EUR by\nFriday.", "Pay Ana 40 EUR by Friday.", "longer_than_input"),
    ("The user was asked many short things in a row.", "Pay. Call. Go. Eat.", "Pay. Call. Go.", "longer_than_input"),
])
def test_summary_is_at_most_three_sentences_and_never_longer_than_its_input(
        raw: str, source: str, expected: str, fallback: str | None) -> None:
    output = clean_summary(raw, source)
    assert (output.text, output.fallback) == (expected, fallback)
    assert guards.summary_problems(output.text, source) == []


def test_a_summary_within_the_limits_keeps_its_line_breaks() -> None:
    raw = "- Water off Tuesday.\n- Fill bottles."
    assert clean_summary(raw, LETTER).text == raw


def test_a_candidate_over_the_word_limit_is_dropped() -> None:
    """The memory prompt's "short standalone statements": 25 words at most, as
    guards.candidate_problems counts."""
    long = " ".join(f"word{i}" for i in range(guards.CANDIDATE_MAX_WORDS + 1))
    output = clean_candidates(json.dumps(["The user is vegan.", long]), "irrelevant")
    assert output.candidates == ["The user is vegan."]
    assert guards.candidate_problems(output.candidates) == []
