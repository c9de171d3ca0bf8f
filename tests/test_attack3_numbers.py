"""Attack review 3, invented numbers: titles and notifications that carry a number their input
does not have, past npud's guard. These tests fail on purpose (findings, not fixes).

CONTRACT.md, `generate`: "No invented numbers in a `title` or `notification`. Every number in the
answer is supported by the input (the rule and its normalisation — `09:30` = `9:30`, `1,000` =
`1 000`, `14th` = `14`, `two` = `2` … — are `npud.guards.invented_numbers`)." Issue 12 defines an
invented number as "a digit sequence in the output that is not in the input".
"""

from __future__ import annotations

from typing import Any

import pytest

from npud.guards import invented_numbers
from npud.jobs import clean_notification, clean_title
from npud.testing.fake import FakeBehaviour, FakeLoader

CASES = [
    # A thousands group makes a new number out of a small one: "1,000" is read as 1000 *and* as
    # the decimal 1.000 = 1, so any "1" in the input supports it.
    ("Pay 1,000 EUR by Friday", "Please pay the 1 EUR fee by Friday.", "1,000"),
    ("Pay 10.000 EUR by Friday", "Please pay 10 EUR by Friday.", "10.000"),
    ("Budget of 5,000 approved", "Budget of 5 items approved.", "5,000"),
    # Superscript digits are deleted before checking, so a superscript number is never seen.
    ("Order ¹²³⁴ shipped", "Your order shipped.", "¹²³⁴"),
    # "cent" is a number word (100), so "5 per cent" supports "100%".
    ("Rent rises 100%", "Rent rises 5 per cent next year.", "100"),
    # Number words in the answer are never checked: "two" = "2" works for the input only.
    ("Meeting in fifteen minutes", "Meeting in 5 minutes.", "fifteen"),
]


@pytest.mark.parametrize(("answer", "source", "number"), CASES)
def test_the_guard_reports_the_invented_number(answer: str, source: str, number: str) -> None:
    assert invented_numbers(answer, source) != [], f"{number!r} in {answer!r} is not in {source!r}"


@pytest.mark.parametrize(("answer", "source", "number"), CASES)
def test_a_title_never_keeps_it(answer: str, source: str, number: str) -> None:
    title = clean_title(answer, source)
    assert number not in title.text, (title.text, title.fallback)


@pytest.mark.parametrize("job", ["title", "notification"])
def test_through_the_daemon(daemon_factory: Any, job: str) -> None:
    """The fake model answers "1,000 EUR" to an input that says "1 EUR": the daemon returns it,
    and counts no fallback."""
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply="Pay 1,000 EUR by Friday.")))
    result = daemon.call("generate", {"job": job, "input": "Reminder: please pay the 1 EUR fee by Friday."})["result"]
    assert "1,000" not in result["text"], result["text"]
    assert daemon.call("health")["result"]["stats"]["fallbacks"] == {f"{job}:invented_number": 1}


def test_notification_through_the_daemon_with_a_word_number(daemon_factory: Any) -> None:
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply="Your train leaves in fifteen minutes from platform 2.")))
    text = "DB: Your train ICE 578 leaves in 5 minutes from platform 2."
    result = daemon.call("condense_notification", {"input": text})["result"]
    assert "fifteen" not in result["text"], result["text"]


def test_clean_notification_keeps_a_thousandfold_amount() -> None:
    out = clean_notification("Chase: you paid $1,000 to John.", "Chase: you paid $1 to John.")
    assert "1,000" not in out.text, out
