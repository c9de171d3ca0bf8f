"""The benchmark's own logic: statistics helpers, variants, /proc parsing, and the optional peer.

No timing is asserted here; the benchmarks themselves are run with ``python -m bench``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import peer
from bench.background import ThreadStat, Variant, block_states, busy_thread_nice, parse_stat
from bench.harness import ratio_spread, rotated
from bench.workload import INPUTS
from npud.jobs import JOBS


def test_ratio_spread_is_per_pair() -> None:
    result = ratio_spread([2.0, 3.0, 8.0, 1.0, 5.0], [1.0, 3.0, 2.0, 2.0, 5.0])
    # ratios 2, 1, 4, 0.5, 1: the median is of the ratios, not a ratio of medians (3 / 2)
    assert result == {"p10": 0.5, "p50": 1.0, "p90": 4.0, "n": 5}


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 2.0]), ([], [])])
def test_ratio_spread_needs_pairs(a: list[float], b: list[float]) -> None:
    with pytest.raises(ValueError):
        ratio_spread(a, b)


def test_rotated_moves_the_subject_through_every_slot_keeping_the_others_in_order() -> None:
    orders = [rotated("npud", ("peer", "peer_no_reuse"), k) for k in range(4)]
    assert orders == [["npud", "peer", "peer_no_reuse"], ["peer", "npud", "peer_no_reuse"],
                      ["peer", "peer_no_reuse", "npud"], ["npud", "peer", "peer_no_reuse"]]


def test_block_states_alternate_and_balance() -> None:
    states = block_states(3)
    assert states == [False, True, True, False, False, True]
    assert states.count(True) == states.count(False)


@pytest.mark.parametrize("spec, prefix, flags", [
    ("as is=npud", (), ()),
    ("stand-in=nice -n 10 npud", ("nice", "-n", "10"), ()),
    ("flag=npud --some-flag 10", (), ("--some-flag", "10")),
])
def test_variant_parse(spec: str, prefix: tuple[str, ...], flags: tuple[str, ...]) -> None:
    variant = Variant.parse(spec)
    assert (variant.prefix, variant.flags) == (prefix, flags)
    assert Variant.parse(f"{variant.label}={variant.command}") == variant


@pytest.mark.parametrize("spec", ["npud", "=npud", "low=nice -n 10"])
def test_variant_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="LABEL=COMMAND"):
        Variant.parse(spec)


def test_bad_cli_variant_and_section_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--bg-variant", "x=nice"], ["--only", "peer,nonsense"]):
        with pytest.raises(SystemExit) as exc:
            bench_main.parse_args(argv)
        assert exc.value.code == 2
    assert "nonsense" in capsys.readouterr().err


def test_parse_stat_reads_nice_cpu_and_policy_after_an_awkward_name() -> None:
    # proc(5): pid (comm) state ppid … utime(14) stime(15) … nice(19) … policy(41); comm may hold
    # ") (" and spaces.
    fields = ["S"] + [str(n) for n in range(4, 53)]
    fields[14 - 3], fields[15 - 3], fields[19 - 3], fields[41 - 3] = "120", "30", "10", "3"
    stat = parse_stat("4242 (py) (thread x) " + " ".join(fields))
    assert stat == ThreadStat(nice=10, cpu_ticks=150, policy=3)


def test_busy_thread_nice_counts_threads_that_worked() -> None:
    before = {1: ThreadStat(0, 100), 2: ThreadStat(10, 0), 3: ThreadStat(10, 50)}
    after = {1: ThreadStat(0, 101), 2: ThreadStat(10, 40, 5), 3: ThreadStat(10, 90, 5), 4: ThreadStat(5, 20, 3)}
    assert busy_thread_nice(1, before, after) == {
        "busy_threads": 3, "busy_thread_nice": [5, 10], "busy_thread_policy": ["batch", "idle"],
        "main_thread_nice": 0, "main_thread_policy": "other"}


def test_every_job_has_enough_distinct_inputs_to_rotate() -> None:
    assert set(INPUTS) == set(JOBS)
    for texts in INPUTS.values():
        assert len(set(texts)) == len(texts) >= 12


def _reply(completion: int, prompt: int = 100, cached: int = 0) -> dict[str, Any]:
    return {"completion_tokens": completion, "prompt_tokens": prompt, "cached_tokens": cached}


def test_check_peer_refuses_different_work() -> None:
    peer._check_peer(_reply(20, cached=60), 20, True, "ok")
    with pytest.raises(peer.TokenMismatch, match="generated 19 tokens, npud 20"):
        peer._check_peer(_reply(19), 20, True, "short")
    with pytest.raises(peer.TokenMismatch, match="whole prompt"):
        peer._check_peer(_reply(20, cached=100), 20, True, "repeat")
    with pytest.raises(peer.TokenMismatch, match="cache_prompt off"):
        peer._check_peer(_reply(20, cached=5), 20, False, "no reuse")


def _no_xllamacpp(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xllamacpp" else real(name, *a))


def test_peer_section_is_skipped_cleanly_without_xllamacpp(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _no_xllamacpp(monkeypatch)
    monkeypatch.setattr(bench_main, "machine", lambda: {"date": "d", "cpu": "c", "cores": 2, "openvino_genai": "v",
                                                        "cpu_busy_before": 0.0})

    def no_daemon(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the skipped section must not start a daemon")

    monkeypatch.setattr(bench_main, "DaemonProcess", no_daemon)
    assert bench_main.main(["--only", "peer"]) == 0
    out = capsys.readouterr().out
    assert "llama.cpp comparison skipped: xllamacpp is not installed" in out
    assert "pip install -e '.[bench]'" in out
    assert "npud ÷ llama.cpp" not in out


def test_job_table_has_the_peer_column() -> None:
    times = {"npud": [100.0, 120.0], "peer": [200.0, 100.0], "peer_no_reuse": [250.0, 240.0]}
    plan = [{"tokens": 10, "finish_reason": "stop", "npud_prompt_tokens": 150, "peer_prompt_tokens": 150}] * 2
    job = peer.summarize_job("summary", plan, times, [120, 120])
    assert job["ratio"] == {"p10": 0.5, "p50": 0.85, "p90": 1.2, "n": 2}
    text = bench_main.job_table({"peer": {"jobs": {"summary": job}}})
    header, _, row = text.splitlines()
    assert "npud ÷ llama.cpp" in header
    assert "0.85 (0.50–1.20)" in row and "≤ 0.8" in row


def test_job_table_has_the_prompt_lookup_columns() -> None:
    """With ÷ without prompt lookup per job, and how many texts differ; the peer columns stay
    empty when the peer was skipped."""
    from bench import lookup

    job = {"job": "title", "inputs": 4, "texts_differ": 2, "ratio": {"p10": 0.6, "p50": 0.75, "p90": 1.1, "n": 16}}
    text = bench_main.job_table({"peer": {"skipped": "not installed"}, "lookup": {"jobs": {"title": job}}})
    header, _, row = text.splitlines()
    assert "with ÷ without prompt lookup" in header and "texts differ" in header
    assert "0.75 (0.60–1.10)" in row and "2/4" in row and row.startswith("| title")
    assert lookup.columns(None, "title") == ("—", "—")
    assert "lookup" in bench_main.SECTIONS


@pytest.mark.realmodel
@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs the bench extra (xllamacpp)")
def test_peer_process_generates_exactly_the_asked_tokens() -> None:
    from npud.engine import builtin_smollm2_gguf

    proc = peer.PeerProcess(builtin_smollm2_gguf(), 2)
    try:
        first = proc.complete(JOBS["title"].messages(INPUTS["title"][0]), 5, cache_prompt=False)
        second = proc.complete(JOBS["title"].messages(INPUTS["title"][1]), 7)
    finally:
        proc.stop()
    assert (first["completion_tokens"], first["cached_tokens"]) == (5, 0)
    assert second["completion_tokens"] == 7
    # the job's fixed prefix (system prompt and examples) is reused, the user's text is not
    assert 0 < second["cached_tokens"] < second["prompt_tokens"]


class FakeNpudClient:
    """Stands in for the daemon's socket: a fixed token count per input, optionally changed once."""

    def __init__(self, tokens: dict[str, int], change_once: str | None = None) -> None:
        self.tokens, self.change_once, self.calls = tokens, change_once, 0

    def request_bytes(self, method: str, params: Any = None) -> bytes:
        import msgspec

        return msgspec.json.encode({"method": method, "params": params})

    def roundtrip(self, data: bytes) -> bytes:
        import msgspec

        text = msgspec.json.decode(data)["params"]["input"]
        self.calls += 1
        generated = self.tokens[text]
        if text == self.change_once and self.calls > len(self.tokens):  # after the plan was made
            self.change_once, generated = None, generated + 1
        return msgspec.json.encode({"result": {"tokens": {"generated": generated, "prompt": 100},
                                               "finish_reason": "stop"}})


class FakePeer:
    """llama.cpp's one slot: a request reuses the common prefix with the previous prompt."""

    def __init__(self) -> None:
        self.previous: list[dict[str, str]] = []

    def complete(self, messages: list[dict[str, str]], max_tokens: int, cache_prompt: bool = True) -> dict[str, Any]:
        common = 0
        for a, b in zip(messages, self.previous):
            if a != b:
                break
            common += 1
        self.previous = messages
        return {"completion_tokens": max_tokens, "prompt_tokens": 10 * len(messages),
                "cached_tokens": 10 * common if cache_prompt else 0}


def test_compare_job_rotates_inputs_so_the_peer_reuses_only_the_fixed_prefix() -> None:
    texts = INPUTS["summary"][:2]
    client = FakeNpudClient({texts[0]: 30, texts[1]: 12})
    result = peer.compare_job(client, FakePeer(), "summary", texts, 3, JOBS["summary"].messages)  # type: ignore[arg-type]
    assert result["pairs"] == 6 and result["dropped_npud_token_changes"] == 0
    assert result["generated_tokens"] == [30, 12]
    # system prompt + one example pair are shared; the user's text never is
    assert result["peer_cached_tokens_p50"] == 30


def test_compare_job_drops_a_triple_when_npud_changes_its_token_count() -> None:
    texts = INPUTS["notification"][:2]
    client = FakeNpudClient({texts[0]: 20, texts[1]: 25}, change_once=texts[1])
    result = peer.compare_job(client, FakePeer(), "notification", texts, 2, JOBS["notification"].messages)  # type: ignore[arg-type]
    assert (result["pairs"], result["dropped_npud_token_changes"]) == (3, 1)


def test_compare_job_refuses_whole_prompt_reuse() -> None:
    text = INPUTS["title"][0]
    with pytest.raises(peer.TokenMismatch, match="whole prompt"):
        peer.compare_job(FakeNpudClient({text: 8}), FakePeer(), "title", [text], 1, JOBS["title"].messages)  # type: ignore[arg-type]
