"""The evaluation set is valid and honest, and its scoring measures what it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import evalset
from bench.evalset import EvalSetError, Item, aggregate, expected_split, has_term, parse_item, score
from npud.guards import find_secrets

JOBS = evalset.JOBS


@pytest.fixture(scope="module")
def items() -> dict[str, list[Item]]:
    return {job: evalset.load(job) for job in JOBS}


@pytest.mark.parametrize("job", JOBS)
def test_every_job_has_enough_valid_items(items: dict[str, list[Item]], job: str) -> None:
    mine = items[job]
    assert len(mine) >= 40
    assert len({item.id for item in mine}) == len(mine)
    assert len({item.input for item in mine}) == len(mine)
    assert sum(item.lang != "en" for item in mine) >= 4  # a few non-English inputs
    assert len({item.source for item in mine}) >= 4  # varied kinds of text


@pytest.mark.parametrize("job", JOBS)
def test_heldout_part_follows_the_fixed_rule(items: dict[str, list[Item]], job: str) -> None:
    """Items cannot move between the parts: the rule is positional and was fixed up front."""
    mine = items[job]
    assert [item.split for item in mine] == [expected_split(n) for n in range(1, len(mine) + 1)]
    heldout = sum(item.split == "heldout" for item in mine) / len(mine)
    assert 0.2 <= heldout <= 0.3


@pytest.mark.parametrize("job", JOBS)
def test_labels_point_at_the_input(items: dict[str, list[Item]], job: str) -> None:
    """Every term to keep, fact to find and string to forbid is in the input in at least one of its
    spellings (a typo in a label would make an item impossible, or a leak undetectable)."""
    for item in items[job]:
        for term in item.keep + [t for fact in item.expected for t in fact] + [
                t for entry in item.forbidden for t in entry.terms]:
            assert has_term(term, item.input), (item.id, term)


def test_memory_set_covers_secrets_private_data_and_trivia(items: dict[str, list[Item]]) -> None:
    memory = items["memory_candidate"]
    kinds = {entry.kind for item in memory for entry in item.forbidden}
    assert kinds == {"secret", "private", "trivia"}
    assert sum(not item.expected for item in memory) >= 4  # nothing worth remembering
    secret_items = [item for item in memory if any(e.kind == "secret" for e in item.forbidden)]
    assert len(secret_items) >= 15
    # The secrets are real ones of every kind the filter knows (Luhn-valid cards, a valid IBAN, …).
    found = {kind for item in secret_items for kind in find_secrets(item.input)}
    assert found >= {"password", "one_time_code", "access_code", "payment_card", "iban", "api_key", "private_key"}
    assert all(find_secrets(item.input) for item in secret_items), "an input's secret is invisible to the filter"


@pytest.mark.parametrize("job", ("title", "summary", "notification"))
def test_ordinary_inputs_hold_no_secret(items: dict[str, list[Item]], job: str) -> None:
    """130 realistic emails and notifications (commit hashes, tracking, order and phone numbers,
    versions, URLs, dates, money): the secret filter finds nothing in them."""
    assert [item.id for item in items[job] if find_secrets(item.input)] == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"id": "x", "job": "title", "split": "dev", "lang": "en", "source": "chat", "input": "hi"}, "keep"),
        ({"id": "x", "job": "title", "split": "dev", "lang": "en", "source": "chat", "input": "hi", "keep": []},
         "keep is empty"),
        ({"id": "x", "job": "title", "split": "test", "lang": "en", "source": "chat", "input": "hi",
          "keep": [["hi"]]}, "split"),
        ({"id": "x", "job": "title", "split": "dev", "lang": "en", "source": "chat", "input": "hi",
          "keep": ["hi"]}, "terms"),
        ({"id": "x", "job": "title", "split": "dev", "lang": "en", "source": "chat", "input": "hi",
          "keep": [["hi"]], "extra": 1}, "unknown"),
        ({"id": "x", "job": "memory_candidate", "split": "dev", "lang": "en", "source": "chat", "input": "hi",
          "forbidden": [{"kind": "gossip", "terms": [["hi"]]}]}, "kind"),
        ({"id": "x", "job": "summary", "split": "dev", "lang": "en", "source": "chat", "input": "  "}, "empty"),
    ],
)
def test_malformed_items_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(EvalSetError, match=message):
        parse_item(raw, "here")


def test_loader_refuses_an_item_in_the_wrong_file(tmp_path: Path) -> None:
    line = {"id": "x", "job": "summary", "split": "dev", "lang": "en", "source": "chat", "input": "hi",
            "keep": [["hi"]]}
    (tmp_path / "title.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(EvalSetError, match="summary in the title file"):
        evalset.load("title", tmp_path)


@pytest.mark.parametrize(
    ("term", "text", "present"),
    [
        (["Zürich"], "meeting in zurich", True),
        (["14-16"], "from 14\u201316 May", True),
        (["583 201"], "code 583201", True),
        (["Sunflower-92"], "sunflower 92", True),
        (["14"], "the 14th", True),
        (["14"], "140 people", False),
        (["Jo"], "Joanna", False),
        (["Jo"], "call me Jo.", True),
        (["invoice"], "two invoices", True),
        (["May"], "maybe later", False),
        (["refund", "reimburse"], "we will reimburse you", True),
    ],
)
def test_term_matching(term: list[str], text: str, present: bool) -> None:
    assert has_term(term, text) is present


def _item(job: str, **fields: object) -> Item:
    raw: dict[str, object] = {"id": "t", "job": job, "split": "dev", "lang": "en", "source": "email", **fields}
    return parse_item(raw, "test")


def test_text_job_scores() -> None:
    item = _item("notification", input="The offsite in Barcelona is 14-16 May.", keep=[["Barcelona"], ["14-16"]])
    good = score(item, "Offsite in Barcelona, 14\u201316 May.")
    bad = score(item, "Offsite on 14-15 May. Bring snacks.")
    failed = score(item, None, error="GenerationFailed")
    assert good["well_formed"] and good["kept"] == [True, True] and good["invented"] == []
    assert not bad["well_formed"] and bad["kept"] == [False, False] and bad["invented"] == ["15"]
    assert failed["problems"] == ["error"] and failed["kept"] == [False, False]
    summary = aggregate([good, bad, failed])
    assert summary["n"] == 3 and summary["errors"] == 1
    assert summary["well_formed"] == pytest.approx(1 / 3)
    assert summary["key_facts"] == pytest.approx(2 / 6) and summary["all_kept"] == pytest.approx(1 / 3)
    assert summary["invented_rate"] == pytest.approx(1 / 2)  # of the answered items


def test_memory_scores_judge_leaks_by_the_labels_not_by_the_filter() -> None:
    item = _item(
        "memory_candidate",
        input="I'm vegan. My Wi-Fi password is Sunflower-92 and my colleague Mark earns 95k. Door: the blue one.",
        expected=[[["vegan"]], [["Wi-Fi", "wifi"], ["router"]]],
        forbidden=[{"kind": "secret", "terms": [["Sunflower-92"]]}, {"kind": "private", "terms": [["Mark"]]},
                   {"kind": "secret", "terms": [["blue one"]]}],
    )
    record = score(item, "", [
        "The user is vegan.",
        "The user's Wi-Fi password is Sunflower 92.",  # labelled leak, filter catches it
        "Mark earns 95k.",  # private leak
        "The door is the blue one.",  # labelled secret the filter cannot know
        "The user likes tea.",  # neither
    ])
    summary = aggregate([record])
    assert record["facts_found"] == [True, False]
    assert summary["candidates"] == 5 and summary["precision"] == pytest.approx(1 / 5)
    assert summary["recall"] == pytest.approx(1 / 2)
    assert summary["leaked_secrets"] == 2 and summary["items_leaking_secrets"] == 1
    assert summary["leaked_private"] == 1 and summary["leaked_trivia"] == 0
    # These candidates did not go through npud's filter: it would drop one of them. What it did
    # drop is what the daemon reports (none here, two below).
    assert summary["filter_left"] == 1
    assert summary["filter_drops"] == 0 and summary["filter_caught_leaks"] == 0
    assert summary["items_with_labelled_secret"] == 1
    dropped = aggregate([score(item, "", ["The user is vegan."], secrets_dropped=2)])
    assert dropped["filter_drops"] == 2 and dropped["filter_caught_leaks"] == 1 and dropped["filter_left"] == 0


def test_an_empty_memory_answer_is_right_when_nothing_is_expected() -> None:
    item = _item("memory_candidate", input="ok thanks", expected=[], forbidden=[])
    summary = aggregate([score(item, "", [])])
    assert summary["well_formed"] == 1.0 and summary["candidates"] == 0
    assert summary["precision"] is None and summary["recall"] is None and summary["leaked_secrets"] == 0
