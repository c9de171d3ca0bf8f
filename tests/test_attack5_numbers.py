"""Attack review 5, invented numbers in titles and notifications (CONTRACT `generate`: "Every
number in the answer, in digits or in words, is supported by the input"; README: "Numbers count
in digits and in words, cardinal and ordinal, in English, French, German and Spanish").

Fixed here (fix and tests in one commit): the French hyphenated "et" of the 1990 spelling
("vingt-et-un", "soixante-et-onze") split the number in two, so an answer's "vingt-et-un" was
read as 20 (supported by an input's "20 invités") and a faithful "vingt-et-un" for "21" was
replaced; "and"/"und" joined any number words, so "between forty and five hundred" read as 4500
and a faithful answer was replaced.

Rows under "open findings" fail on purpose (findings, not fixes).
"""

from __future__ import annotations

from typing import Any

import pytest

from npud.guards import invented_numbers
from npud.testing.fake import FakeBehaviour, FakeLoader

# (answer, input): the answer's number is not in the input.
INVENTED = [
    ("Vingt-et-un invités au dîner", "Dîner avec 20 invités"),
    ("Soixante-et-onze ans demain", "Anniversaire : 60 ans, 11 invités demain"),
    ("Le vingt-et-unième siècle", "Le 20e siècle"),
]
# (answer, input): a faithful answer, every number supported.
FAITHFUL = [
    ("Vingt-et-un invités au dîner", "Dîner avec 21 invités"),
    ("Soixante-et-onze ans demain", "Anniversaire : 71 ans demain"),
    ("Le vingt-et-unième siècle", "Le 21e siècle"),
    ("Between forty and five hundred guests", "Between 40 and 500 guests"),
    ("Zwischen zwanzig und fünf Gästen", "Zwischen 20 und 5 Gästen"),
    # What the joiners must still join.
    ("Two hundred and fifty guests", "250 guests"),
    ("Vingt et un invités", "21 invités"),
    ("Treinta y cinco invitados", "35 invitados"),
    ("Soixante et onze ans", "71 ans"),
]


@pytest.mark.parametrize(("answer", "source"), INVENTED)
def test_an_invented_number_word_is_reported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source), (answer, source)


@pytest.mark.parametrize(("answer", "source"), FAITHFUL)
def test_a_faithful_number_word_is_supported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source) == [], (answer, source)


def test_the_daemon_replaces_an_invented_vingt_et_un(daemon_factory: Any) -> None:
    source = "Rappel : dîner samedi avec 20 invités."
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply="Dîner samedi avec vingt-et-un invités.")))
    result = daemon.call("condense_notification", {"input": source})["result"]
    assert "vingt-et-un" not in result["text"], result["text"]
    assert invented_numbers(result["text"], source) == []


# ---------------------------------------------------------------- review-5 findings, fixed in fix5

@pytest.mark.parametrize(("answer", "source"), [
    # German writes every number under a million as one word (read by splitting at tausend/hundert).
    ("Zweihundertfünfzig Gäste zur Hochzeit", "Hochzeit mit 200 Gästen"),
    ("Hundertzwanzig Euro Miete", "Miete: 100 Euro"),
    ("Dreitausendfünfhundert Euro Kaution", "Kaution 3000 Euro"),
    # The word "minus" is a minus sign.
    ("Temperature minus 5 degrees tonight", "Temperature 5 degrees tonight"),
    # Spanish written without accents, as people type it.
    ("Veintidos invitados", "20 invitados"),
    ("Dieciseis invitados", "10 invitados"),
    # Spanish ordinals past "décimo".
    ("El vigésimo aniversario", "El aniversario: 10 años"),
])
def test_a_compound_accentless_or_minus_number_word_is_reported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source), (answer, source)


@pytest.mark.parametrize(("answer", "source"), [
    # An ordinal after a scale ends the number: 101.
    ("The hundred and first day", "Day 101 of the project"),
    ("The one hundred first day", "Day 101 of the project"),
    # The input's word "minus" makes its number negative.
    ("Low of −5 °C tonight", "Low of minus 5 °C tonight"),
])
def test_a_faithful_ordinal_after_a_scale_or_a_minus_word_is_supported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source) == [], (answer, source)


@pytest.mark.parametrize(("answer", "source"), [
    # A number followed by an ellipsis is read as cut short (the title's own 80-character cap
    # writes "…"), so any prefix of an input number passes: a model that trails off after an
    # invented "2" or "3" is not caught.
    ("Rent due on the 2...", "Rent of 2500 EUR due on the 1st"),
    ("Flight delayed by 3…", "Flight LH 482 delayed by 30 minutes"),
])
def test_a_number_the_model_trails_off_after_is_checked(answer: str, source: str) -> None:
    assert invented_numbers(answer, source), (answer, source)


def test_the_daemon_does_not_return_a_number_the_model_trails_off_after(daemon_factory: Any) -> None:
    source = "Reminder: rent of 2500 EUR is due on the 1st."
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply="Rent due on the 2...")))
    text = daemon.call("condense_notification", {"input": source})["result"]["text"]
    assert invented_numbers(text.replace("...", ""), source) == [], text


@pytest.mark.parametrize(("answer", "source", "invented"), [
    # npud's own cap: the end of the text, inside a word of at least CUT_WORD_MIN_CHARS characters.
    ("Ref " + "1234567890" * 3 + "…", "Ref " + "1234567890" * 5, False),
    ("Ref " + "1234567890" * 3 + "...", "Ref " + "1234567890" * 5, False),
    # Not at the end, or a short word, or a number of another kind: checked as written.
    ("Ref " + "1234567890" * 3 + "… and more", "Ref " + "1234567890" * 5, True),
    ("Invoice 12345…", "Invoice 1234567", True),
    ("Ref x" + "1234567890" * 3 + "…", "Ref " + "1234567890" * 5, True),
])
def test_only_the_caps_own_cut_is_read_as_a_cut_number(answer: str, source: str, invented: bool) -> None:
    assert bool(invented_numbers(answer, source)) is invented, (answer, source)


@pytest.mark.parametrize(("answer", "source"), [
    ("Zweihundertfünfzig Gäste zur Hochzeit", "Hochzeit mit 250 Gästen"),
    ("Hundertzwanzig Euro Miete", "Miete: 120 Euro"),
    ("Dreitausendfünfhundert Euro Kaution", "Kaution 3.500 Euro"),
    ("Der hundertdritte Tag", "Tag 103"),
    ("Zum zweihundertfünfzigsten Jubiläum", "250. Jubiläum"),
    ("Tausendundeine Nacht", "1001 Nacht"),
    # Not numbers: a century, "hundreds", "one hundred percent".
    ("Ein Jahrhundert Geschichte", "Geschichte"),
    ("Hunderte Gäste, tausende Fans", "Viele Gäste"),
    ("Hundertprozentig sicher", "Sicher"),
    # Spanish as typed, without accents, and its ordinals past the tenth.
    ("Veintidos invitados", "22 invitados"),
    ("El vigesimo aniversario", "El aniversario número 20"),
    ("El decimoquinto piso", "Piso 15"),
    ("Un millon de visitas", "1000000 visitas"),
    # The word "minus", in digits and in words, both ways.
    ("Temperature minus 5 degrees", "Temperature -5 degrees"),
    ("Low of minus five tonight", "Low of −5 °C tonight"),
    ("Low of −5 °C tonight", "Low of minus five tonight"),
])
def test_a_faithful_compound_accentless_or_minus_number_is_supported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source) == [], (answer, source)


@pytest.mark.parametrize(("answer", "source"), [
    ("Der hundertdritte Tag", "Tag 100"),
    ("Low of minus five tonight", "Low of 5 °C tonight"),
    ("El decimoquinto piso", "Piso 10"),
])
def test_an_invented_compound_ordinal_or_minus_word_is_reported(answer: str, source: str) -> None:
    assert invented_numbers(answer, source), (answer, source)


def test_the_word_minus_alone_supports_no_zero() -> None:
    assert invented_numbers("Low of 0 degrees", "Low of minus five degrees") == ["0"]


@pytest.mark.parametrize("text", ["hundert" * 857, "zweihundert" * 545, "tausendund" * 600, "minus " * 1000,
                                  "minus5" * 1000, "veintidos" * 666, "hundertste" * 600])
def test_the_new_number_readings_take_a_6000_character_input(text: str) -> None:
    """Linear on an input at the size limit (functional: the suite stays fast when it is)."""
    assert isinstance(invented_numbers(text, text[::-1]), list)
    assert isinstance(invented_numbers(text[::-1], text), list)
