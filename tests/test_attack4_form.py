"""Attack review 4, output form: the jobs cut sentences on the text as written, the guards count
them on the normalised text (invisible characters removed, NFKC), so an answer the job returns as
"one sentence" is two by the rule CONTRACT.md states and the evaluation measures. These tests fail
on purpose (findings, not fixes). The fake engine plays the model; post-processing is the real one.
"""

from __future__ import annotations

from typing import Any

import pytest

from npud.guards import notification_problems, summary_problems
from npud.testing.fake import FakeBehaviour, FakeLoader

SOURCE = ("The team meeting was moved to Friday because the room was booked. Please bring the printed "
          "agenda. Lunch will be provided. Parking is free for visitors. ") * 2

GLUED = [
    "Meeting moved to Friday.\u200bBring the agenda.",  # a zero-width space after the full stop
    "Meeting moved to Friday\uff0e Bring the agenda.",  # a fullwidth full stop, then a space
]


@pytest.mark.parametrize("reply", GLUED)
def test_a_notification_is_one_sentence(daemon_factory: Any, reply: str) -> None:
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    text = daemon.call("condense_notification", {"input": SOURCE})["result"]["text"]
    assert notification_problems(text) == [], f"{text!r}: {notification_problems(text)}"


@pytest.mark.parametrize("reply", [
    "Meeting moved to Friday.\u200bBring the agenda.\u200bLunch is provided.\u200bParking is free.",
    "Meeting moved to Friday\uff0e Bring the agenda\uff0e Lunch is provided\uff0e Parking is free.",
])
def test_a_summary_is_at_most_three_sentences(daemon_factory: Any, reply: str) -> None:
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=reply)))
    text = daemon.call("generate", {"job": "summary", "input": SOURCE})["result"]["text"]
    assert summary_problems(text, SOURCE) == [], f"{text!r}: {summary_problems(text, SOURCE)}"
