"""Attack review 4, invented numbers: answers that still pass with a number their input lacks,
and faithful answers that are replaced although their numbers are in the input. These tests fail
on purpose (findings, not fixes).

CONTRACT.md, `generate`: "Every number in the answer, in digits or in words, is supported by the
input ... Number words in the answer are checked like digits (`fifteen` needs a 15 ...)".
"""

from __future__ import annotations

from typing import Any

import pytest

from npud.guards import invented_numbers
from npud.testing.fake import FakeBehaviour, FakeLoader

INVENTED = [
    # Ordinal words past "fifth"/"tenth" are not number words at all: a changed date passes.
    ("Dentist moved to May fifteenth", "The dentist appointment moved to May 14."),
    ("Party for her thirtieth birthday", "Party for her birthday on Saturday."),
    ("Rent is due on the twelfth", "Rent is due on the 1st of the month."),
    # German, a listed language (zwei, zwanzig are known), has no teens: fünfzehn passes.
    ("Besprechung in fünfzehn Minuten", "Die Besprechung beginnt in 10 Minuten."),
    # A sign is part of the number: -5 °C is not 5 °C.
    ("Frost warning: -5°C tonight", "Weather: 5°C tonight, clear skies."),
]


@pytest.mark.parametrize(("answer", "source"), INVENTED)
def test_an_invented_number_is_reported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source) != [], f"{answer!r} passes against {source!r}"


FAITHFUL = [
    # The input's ordinal words support the answer's ordinal digits.
    ("21st birthday party on Friday", "Her twenty-first birthday party is on Friday."),
    ("Meeting on 15th May", "The meeting is on the fifteenth of May."),
    # CJK: a number glued to CJK characters makes the whole run one "identifier" that must be
    # copied whole, so a faithful reordering or a converted currency is replaced.
    ("会议3月14日", "3月14日开会"),
    ("¥5000 due", "5,000円の支払い"),
]


@pytest.mark.parametrize(("answer", "source"), FAITHFUL)
def test_a_faithful_number_is_supported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source) == []


def test_the_daemon_returns_an_invented_ordinal_date(daemon_factory: Any) -> None:
    source = "Reminder: the dentist appointment moved to May 14 at 9:30."
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply="Dentist appointment moved to May fifteenth.")))
    text = daemon.call("condense_notification", {"input": source})["result"]["text"]
    assert "fifteenth" not in text, f"an invented date returned: {text!r}"
