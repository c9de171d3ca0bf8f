"""Attack review 3, docs against behaviour for issues 11 and 12. These tests fail on purpose
(findings, not fixes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import evalset
from npud.jobs import JOBS, clean_candidates

REPO = Path(__file__).resolve().parent.parent
CONTRACT = (REPO / "CONTRACT.md").read_text(encoding="utf-8")


def test_every_test_the_contract_cites_exists() -> None:
    """CONTRACT §8 "Decoding": "a stop (deadline, cancel, shutdown) ends the generation within that
    round (`test_prompt_lookup_stops_within_the_round_it_was_asked_in`)". No such test exists; the
    one that does (tests/test_real_model.py::test_prompt_lookup_stops_when_asked) asserts no such
    bound and says more rounds follow the stop."""
    defined = set()
    for path in (REPO / "tests").glob("*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(encoding="utf-8"), re.MULTILINE))
    cited = set(re.findall(r"`(test_\w+)`", CONTRACT))
    assert cited - defined == set()


def test_the_npu_table_says_what_npud_sends() -> None:
    """CONTRACT §8, NPU decoding table, row `structured_output_config`: "npud sends it: no
    (evaluated for memory_candidate ...)". npud does send a JSON schema for memory_candidate on
    every pipeline (npud/jobs.py: "every pipeline enforces it, the NPU's too"; the `models` example
    of §4, on the NPU, says "structured_output":"json_schema")."""
    row = next(line for line in CONTRACT.splitlines() if line.startswith("| `structured_output_config`"))
    sends = [cell.strip() for cell in row.strip("|").split("|")][2]
    assert any(spec.json_schema for spec in JOBS.values())  # the premise
    assert not sends.startswith("no"), row


def test_the_quality_report_can_see_what_the_secret_filter_catches() -> None:
    """bench/eval/README.md: the memory table shows "what the filter (`npud.guards.find_secrets`)
    **would drop**, with how many of the labelled secret leaks it catches". bench.quality scores the
    candidates the daemon returns, which have already been through that filter, so the column is 0
    by construction: here the model does extract memory-01's labelled Wi-Fi password, the filter
    drops it, and the report says the filter would drop nothing and caught 0 leaks."""
    item = next(i for i in evalset.load("memory_candidate") if i.id == "memory-01")
    raw = json.dumps(["The user is vegan.", "The user's Wi-Fi password is Sunflower-92."])
    output = clean_candidates(raw, item.input)  # what the daemon returns
    assert output.secrets_dropped == 1  # the premise: the filter caught the labelled secret
    # The daemon reports its drops (bench.quality reads them from health, item by item): the
    # returned candidates alone cannot show them. (Test changed from the attack review's version,
    # which called score without the count and so asked for the impossible.)
    summary = evalset.aggregate([evalset.score(item, output.text, output.candidates,
                                               secrets_dropped=output.secrets_dropped)])
    assert summary["filter_drops"] >= 1 or summary["filter_caught_leaks"] >= 1, summary
