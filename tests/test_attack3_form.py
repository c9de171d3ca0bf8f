"""Attack review 3, output form: answers that break the form CONTRACT.md promises "whatever the
model emits". These tests fail on purpose (findings, not fixes). The fake engine plays a model
that answers badly; the daemon's post-processing is the real one.

CONTRACT.md, `generate`: "a `notification` is one sentence on one line ("Dr." or "a.m." does not
end it) of at most 20 words; a `summary` is at most three sentences ..."; "When the model's answer
holds a number the input lacks ..., or loops ("Quick, quick, quick"), the answer is replaced".
"""

from __future__ import annotations

from typing import Any

import pytest

from npud.jobs import clean_title
from npud.testing.fake import FakeBehaviour, FakeLoader

SOURCE = "Standup moved to 10 am tomorrow in room 5; bring your laptop. Lunch is at noon. See you there."


@pytest.mark.parametrize("reply", [
    "Standup moved to 10 am. Bring your laptop.",        # "am" is on the abbreviation list
    "Standup moved to room 5. Bring your laptop.",       # a one-character word before the full stop
    "The answer is no. Standup moved.",                  # "no" is on the abbreviation list
    "站会改到明天上午10点。请带笔记本电脑。",                  # CJK full stops are not sentence ends
])
def test_a_notification_is_one_sentence(daemon_factory: Any, reply: str) -> None:
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    text = daemon.call("condense_notification", {"input": SOURCE})["result"]["text"]
    assert text != reply, f"two sentences returned as one notification: {text!r}"


def test_a_summary_is_at_most_three_sentences(daemon_factory: Any) -> None:
    reply = "Standup is at 10 am. Bring your laptop. Lunch is at noon. The room is no. 5. See you there."
    source = SOURCE + " " + "Please read the agenda before the meeting and add your topics to it. " * 3
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    text = daemon.call("generate", {"job": "summary", "input": source})["result"]["text"]
    assert "See you there" not in text, f"five sentences returned as a summary: {text!r}"


def test_the_documented_loop_is_replaced() -> None:
    """Issue: 'Quick, quick, quick' is the CONTRACT's own example of a loop that is replaced, and
    the evaluation run returns it (title-04, title-35 of bench/eval, counted as well-formed)."""
    source = "The nightly build of the payments-service has failed three nights in a row."
    out = clean_title("Quick, quick, quick: 3 nights in a row", source)
    assert out.fallback == "repetition", out


def test_a_title_of_an_input_that_starts_with_a_long_link_is_not_an_error(daemon_factory: Any) -> None:
    """A model that copies the input's link faithfully: the 80-character cap cuts the link, the cut
    is taken for an invented number, the extractive fallback is cut the same way, and the title
    comes out empty: -32003 for an ordinary input."""
    link = "https://github.com/example-org/payments-service/pull/4821/files#diff-3f9a2c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=link)))
    reply = daemon.call("generate", {"job": "title", "input": f"{link} please review before Friday"})
    assert "result" in reply, reply


@pytest.mark.parametrize("clean", ["title", "notification"])
def test_a_cut_answer_does_not_end_on_an_open_bracket(clean: str) -> None:
    """Cosmetic. The word cap keeps the non-words after the last counted word, and the dangling-word
    rule does not know "(": bench/eval notification-14 came back as "... to CVE-2021-23337 ("."""
    from npud.jobs import clean_notification

    source = "Dependabot: Bump lodash from 4.17.20 to 4.17.21 in /frontend; it fixes CVE-2021-23337 (command injection)."
    if clean == "title":
        text = clean_title("Bump lodash in the frontend for the fix ( command injection", source).text
    else:
        text = clean_notification("Dependabot bumps lodash from 4.17.20 to 4.17.21 in the frontend and fixes "
                                  "CVE-2021-23337 a known issue in the old version ( command injection).",
                                  source).text
    assert not text.endswith("("), text
