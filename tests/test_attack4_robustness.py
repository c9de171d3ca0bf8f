"""Attack review 4, robustness of post-processing: input or model output that made it raise or
scan quadratically on the worker thread (which holds the GIL, so the event loop waits too)."""

from __future__ import annotations

from typing import Any

from npud.guards import form, sentences
from npud.jobs import clean_candidates
from npud.testing.fake import FakeBehaviour, FakeLoader


def test_deeply_nested_brackets_from_the_model_are_not_a_generation_failure(daemon_factory: Any) -> None:
    """json's decoder raises RecursionError (not ValueError) past about 1000 levels; the module
    promises post-processing "never raises on odd output". Fixed with this test."""
    assert clean_candidates("[" * 1200, "input").candidates == []
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply="[" * 1200)))
    reply = daemon.call("extract_memory_candidates", {"input": "I like tea."})
    assert "result" in reply and reply["result"]["candidates"] == [], reply
    assert daemon.call("health")["result"]["status"] == "ready"


def test_a_run_of_marks_is_one_sentence_end_attempt() -> None:
    """A title's or notification's extractive fallback splits the *client's* input into sentences:
    6000 "?" took 0.3 s of regex (6000 attempts of up to 6000 characters; "…" 3 s in a summary).
    Not timed here (speed belongs to benchmarks): the structural cause is pinned instead, a match
    never starts inside a run of marks. Fixed with this test."""
    text = "Wait?? Yes"
    assert form._SENTENCE_END.match(text, 5) is None  # the second "?" of the run
    assert form._SENTENCE_END.match(text, 4) is not None
    assert sentences("Wait?? Yes. " + "?" * 6000 + " End") == ["Wait??", "Yes.", "?" * 6000, "End"]
