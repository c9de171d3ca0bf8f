"""Attack review 5, summaries: "never longer than the input" (CONTRACT `summarize`, README "What
npud guarantees") when the input is its own summary.

When even the model's first sentence is longer than the input, the job returns the input's first
three sentences. They were joined with a space, but CJK sentences have none between them
("会议改到周五。请带上议程。"): the answer came back one character longer than the input per
sentence joined, the very limit the fallback exists to keep.
"""

from __future__ import annotations

from typing import Any

import pytest

from npud.guards import summary_problems
from npud.jobs import clean_summary
from npud.testing.fake import FakeBehaviour, FakeLoader

# A rambling first sentence, longer than the short input.
RAMBLE = "会议将会被改到下一个星期的星期五下午三点钟举行，所有人都必须参加并且带上议程和笔记本电脑。"

INPUTS = [
    "会议改到周五。请带上议程。",
    "会議は金曜日に変更。議題を持参。",
    "会议改到周五。请带上议程。别迟到。谢谢。",
    "Short note. 会议改到周五。请带上议程。",
]


@pytest.mark.parametrize("source", INPUTS)
def test_the_input_as_its_own_summary_is_never_longer_than_the_input(source: str) -> None:
    output = clean_summary(RAMBLE, source)
    assert output.fallback == "longer_than_input"
    assert len(output.text) <= len(source), (output.text, source)
    assert summary_problems(output.text, source) == [], output.text


def test_the_fallback_keeps_the_input_as_written() -> None:
    """The input's first three sentences as they stand in it (its white space made single)."""
    output = clean_summary(RAMBLE, "会议改到周五。请带上议程。别迟到。谢谢。")
    assert output.text == "会议改到周五。请带上议程。别迟到。"
    output = clean_summary("A much longer first sentence than the input has, by far, really.",
                           "Meeting moved.  Bring   the agenda. Be on time. Thanks.")
    assert output.text == "Meeting moved. Bring the agenda. Be on time."


def test_the_daemon_returns_no_summary_longer_than_a_cjk_input(daemon_factory: Any) -> None:
    source = INPUTS[0]
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=RAMBLE)))
    result = daemon.call("generate", {"job": "summary", "input": source})["result"]
    assert len(result["text"]) <= len(source), result["text"]
