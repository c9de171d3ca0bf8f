"""Post-processing tables: whatever the model emits, the form of each job's output holds."""

from __future__ import annotations

import pytest

from npud.jobs import JOBS, TITLE_MAX_CHARS, clean_candidates, clean_notification, clean_summary, clean_title


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
    assert clean_title(raw).text == expected


def test_title_is_capped_at_a_word_boundary() -> None:
    raw = " ".join(["word"] * 40)
    title = clean_title(raw).text
    assert len(title) <= TITLE_MAX_CHARS and title.endswith("word") and "\n" not in title


def test_notification_is_one_sentence_on_one_line() -> None:
    assert clean_notification("Build passed. Deploy starts at 10.\nMore text").text == "Build passed."
    assert clean_notification("Notification: The meeting moved to Friday!").text == "The meeting moved to Friday!"
    assert clean_notification("No final punctuation").text == "No final punctuation"


def test_summary_keeps_text_and_drops_label() -> None:
    assert clean_summary("Summary: Two sentences. Here.\n").text == "Two sentences. Here."


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
        ('{"candidates": "not a list"}', []),
        ("", []),
        ("- " + "x" * 500, []),  # too long to be a short statement
    ],
)
def test_candidates(raw: str, expected: list[str]) -> None:
    output = clean_candidates(raw)
    assert output.candidates == expected
    assert output.text == "\n".join(expected)


def test_candidates_are_capped() -> None:
    raw = "\n".join(f"- fact number {i}" for i in range(30))
    assert len(clean_candidates(raw).candidates or []) == 8


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
    assert clean_title(raw).text == "Exciting plans ahead! Team Planning Offsite to Barcelona"
    assert clean_title("Notes on the Offsite for the Team in Barcelona and").text == "Notes on the Offsite for the Team"
    assert clean_title("Budget - Q3 - Final & Approved - Numbers").text == "Budget - Q3 - Final & Approved - Numbers"


def test_notification_keeps_abbreviations_and_its_word_limit() -> None:
    assert clean_notification("Your appointment with Dr. Rahman is at 10 a.m. today. Bring ID.").text == (
        "Your appointment with Dr. Rahman is at 10 a.m. today.")
    long = ("The dentist office on Queen Street has a dentist for every fifteen minutes away from the main office "
            "of the dentist today.")
    capped = clean_notification(long).text  # cut after 20 words, then the dangling "of the" goes
    assert capped == "The dentist office on Queen Street has a dentist for every fifteen minutes away from the main office"
    assert len(capped.split()) <= 20
    assert clean_notification("Flight LH 1234 Frankfurt–Lisbon is delayed.").text == "Flight LH 1234 Frankfurt–Lisbon is delayed."


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
    output = clean_candidates(raw)
    assert output.candidates == kept and output.text == "\n".join(kept)
    assert output.secrets_dropped == dropped


def test_secrets_do_not_take_candidate_slots() -> None:
    raw = "\n".join([f"- pw: Secret{i}x!" for i in range(10)] + [f"- fact number {i}" for i in range(10)])
    output = clean_candidates(raw)
    assert output.candidates == [f"fact number {i}" for i in range(8)] and output.secrets_dropped == 10
