"""Decoding settings and output guarantees through the daemon, with the fake engine: what health
and models say about decoding, the prompt-lookup switch, the secret counters, and the guarantees
that do not depend on the model (no invented numbers, the form of each job's output)."""

from __future__ import annotations

import http.client
import logging
from pathlib import Path
from typing import Any

import pytest

from npud.config import load_config
from npud.engine import decoding_features, pipeline_kwargs, uses_prompt_lookup
from npud.jobs import JOBS
from npud.testing.fake import FakeBehaviour, FakeLoader

from .conftest import make_config

# ---------------------------------------------------------------- which decoding, and the switch


def test_prompt_lookup_is_on_by_default_and_the_flag_or_env_turns_it_off(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert load_config(["--device", "CPU"], env).prompt_lookup is True
    assert load_config(["--device", "CPU", "--no-prompt-lookup"], env).prompt_lookup is False
    assert load_config(["--device", "CPU"], {**env, "OV_GENAI_NPU_NO_PROMPT_LOOKUP": "1"}).prompt_lookup is False
    assert load_config(["--device", "CPU"], {**env, "OV_GENAI_NPU_NO_PROMPT_LOOKUP": "0"}).prompt_lookup is True


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"device": "CPU"}, True),
    ({"device": "CPU", "prompt_lookup": False}, False),
    ({"device": "NPU"}, False),  # its pipeline ignores it: never sent (tests/test_npu.py)
    ({"device": "NPU", "npu_emulation": True}, False),
])
def test_what_reaches_the_pipeline_is_what_is_reported(tmp_path: Path, overrides: dict[str, Any],
                                                       expected: bool) -> None:
    config = make_config(tmp_path, **overrides)
    kwargs = pipeline_kwargs(config, tmp_path, decoding_features(config))
    assert ("prompt_lookup" in kwargs) is expected and uses_prompt_lookup(config) is expected


def test_every_job_has_draft_settings_and_no_prompt_penalty() -> None:
    """A prompt-lookup pipeline refuses a generation without draft settings (measured, see
    tests/test_real_model.py), and repetition_penalty would penalise the prompt's tokens, the very
    names and numbers the jobs must copy."""
    for spec in JOBS.values():
        assert spec.prompt_lookup.num_assistant_tokens >= 1 and spec.prompt_lookup.max_ngram_size >= 1
        assert spec.repetition_penalty == 1.0
        assert not hasattr(spec, "no_repeat_ngram_size")  # it does nothing in greedy decoding


@pytest.mark.parametrize("prompt_lookup", [True, False])
def test_health_and_models_say_which_decoding_is_in_use(daemon_factory: Any, prompt_lookup: bool) -> None:
    daemon = daemon_factory(prompt_lookup=prompt_lookup)
    health = daemon.call("health")["result"]
    assert health["decoding"] == ("prompt_lookup" if prompt_lookup else "greedy")
    jobs = daemon.call("models")["result"]["models"][0]["jobs"]
    assert [j["name"] for j in jobs] == list(JOBS)
    for info in jobs:
        spec = JOBS[info["name"]]
        drafts = spec.prompt_lookup
        assert info["decoding"] == {
            "strategy": "prompt_lookup" if prompt_lookup else "greedy",
            "repetition_penalty": spec.repetition_penalty,
            "frequency_penalty": spec.frequency_penalty,
            "presence_penalty": spec.presence_penalty,
            "num_assistant_tokens": drafts.num_assistant_tokens if prompt_lookup else None,
            "max_ngram_size": drafts.max_ngram_size if prompt_lookup else None,
            "structured_output": "json_schema" if spec.name == "memory_candidate" else None,
        }


# ---------------------------------------------------------------- secrets: counted by kind, never the text

SECRET_REPLY = ("- The user is vegan.\n"
                "- The user's card is 4539 1488 0343 6467.\n"
                "- The user's Wi-Fi password is Sunflower-92.\n"
                "- The user's card is 4539-1488-0343-6467 and the PIN is 4821.")


def test_dropped_secrets_are_counted_by_kind_in_health_and_metrics(
        daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    caplog.set_level(logging.DEBUG)
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=SECRET_REPLY)), http=True)
    assert daemon.call("health")["result"]["stats"]["secrets_dropped"] == {}
    result = daemon.call("extract_memory_candidates", {"input": "I'm vegan; card 4539 1488 0343 6467."})["result"]
    assert result["candidates"] == ["The user is vegan."]
    # Three statements dropped: two with a card (one also with a PIN, a password), one with a password.
    expected = {"password": 2, "payment_card": 2}
    assert daemon.call("health")["result"]["stats"]["secrets_dropped"] == expected
    daemon.call("generate", {"job": "memory_candidate", "input": "again"})
    assert daemon.call("health")["result"]["stats"]["secrets_dropped"] == {"password": 4, "payment_card": 4}

    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("npud_memory_secrets_dropped_total", (("kind", "password"),))] == 4
    assert samples[("npud_memory_secrets_dropped_total", (("kind", "payment_card"),))] == 4

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "memory_candidate: dropped 3 candidate(s) holding a secret (password, payment_card)" in logged
    for secret in ("4539", "Sunflower", "4821", "vegan"):
        assert secret not in logged and secret not in text


# ---------------------------------------------------------------- guarantees that do not depend on the model

from npud import guards  # noqa: E402

#: Inputs with and without numbers of their own; the fake model always answers with made-up ones.
INPUTS = [
    "We moved the standup to 9:30 on Thursday, 14 May. Bring the Q2 numbers.",
    "GitHub: pull request #77 'Fix login' was merged into main by bob. 3 files changed.",
    "Your parcel could not be delivered today; pick it up at the post office.",
    "Invoice 2024-118: 1 250,00 EUR due on 30.06.2025, IBAN on file.",
    "Bonjour ! La réunion est décalée à 15h, salle 204.",
]
INVENTING = "Meeting at 99:99 in room 4711 — 12.5% off, 3 tickets, #482, call 555-0199"


@pytest.mark.parametrize("job", ["title", "notification"])
def test_a_model_that_always_invents_numbers_never_gets_one_through(daemon_factory: Any, job: str) -> None:
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=INVENTING)))
    for text in INPUTS:
        result = daemon.call("generate", {"job": job, "input": text})["result"]
        assert result["text"], text
        assert guards.invented_numbers(result["text"], text) == [], (text, result["text"])
        assert guards.invented_numbers(INVENTING, text)  # the premise: the model did invent some
    stats = daemon.call("health")["result"]["stats"]
    assert stats["fallbacks"] == {f"{job}:invented_number": len(INPUTS)}


def test_answers_without_made_up_numbers_are_kept_and_not_counted(daemon_factory: Any) -> None:
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply="Standup moved to 9:30 on 14 May")))
    text = INPUTS[0]
    assert daemon.call("generate", {"job": "title", "input": text})["result"]["text"] == "Standup moved to 9:30 on 14 May"
    assert daemon.call("condense_notification", {"input": text})["result"]["text"] == "Standup moved to 9:30 on 14 May"
    assert daemon.call("health")["result"]["stats"]["fallbacks"] == {}


def test_a_summary_longer_than_its_input_is_cut_or_replaced(daemon_factory: Any) -> None:
    long_reply = "The user was told about a meeting. " * 2 + "It is at nine thirty on a Thursday in May, probably."
    daemon = daemon_factory(FakeLoader(FakeBehaviour(reply=long_reply)))
    short = "Standup 9:30 Thu."
    result = daemon.call("generate", {"job": "summary", "input": short})["result"]
    assert result["text"] == short and not guards.summary_problems(result["text"], short)
    longer = "The standup moved to 9:30 on Thursday; it was at 10 before. Bring notes and the Q2 numbers, please."
    result = daemon.call("generate", {"job": "summary", "input": longer})["result"]
    # The repeated sentence goes; the rest fits.
    assert result["text"] == "The user was told about a meeting. It is at nine thirty on a Thursday in May, probably."
    assert not guards.summary_problems(result["text"], longer)
    assert daemon.call("health")["result"]["stats"]["fallbacks"] == {"summary:longer_than_input": 1}
