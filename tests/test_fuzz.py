"""Property tests (hypothesis) on framing and parsing, and a bounded fuzz run against a live daemon.

Run longer locally with NPUD_FUZZ_EXAMPLES=20000 (the default keeps the suite fast).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npuclient.framing import LineBuffer
from npuclient.protocol import ErrorResponse
from npud.rpc import ParsedLine, parse_line

from .conftest import RawConnection, RunningDaemon

EXAMPLES = int(os.environ.get("NPUD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
METHODS = ["health", "models", "generate", "extract_memory_candidates", "condense_notification", "cancel"]

# Text a client can send: any code point except lone surrogates, which cannot be encoded as UTF-8
# (the daemon's handling of "\ud800" escapes is tested with hand-written lines below).
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=20,
)
hostile_params = st.dictionaries(
    st.sampled_from(["job", "input", "max_new_tokens", "timeout_ms", "id", "extra"]),
    json_values | st.sampled_from(["title", "summary", "notification", "memory_candidate", "", " "])
    | st.integers(min_value=-5, max_value=400)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300),
    max_size=5,
)
request_ids = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), texts, st.none())


@st.composite
def valid_shaped(draw: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": draw(st.sampled_from(METHODS)),
                               "id": draw(request_ids)}
    if draw(st.booleans()):
        request["params"] = draw(hostile_params)
    return request


@FUZZ
@given(st.lists(st.binary(max_size=50).filter(lambda b: b"\n" not in b), max_size=8), st.data())
def test_framing_reassembles_any_chunking(lines: list[bytes], data: Any) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=10)))
    buffer = LineBuffer(max_line_bytes=1000)
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got.extend(buffer.feed(stream[start:cut]))
        start = cut
    assert got == [line[:-1] if line.endswith(b"\r") else line for line in lines]


@FUZZ
@given(st.binary(max_size=300))
def test_parse_never_raises_on_bytes(line: bytes) -> None:
    parsed = parse_line(line)
    assert isinstance(parsed, (ErrorResponse, ParsedLine))


@FUZZ
@given(json_values)
def test_parse_never_raises_on_json(value: Any) -> None:
    parsed = parse_line(msgspec.json.encode(value))
    assert isinstance(parsed, (ErrorResponse, ParsedLine))


def expected_replies(line: bytes) -> int:
    parsed = parse_line(line)
    if isinstance(parsed, ErrorResponse):
        return 1
    answered = [i for i in parsed.items if isinstance(i, ErrorResponse) or not i.is_notification]
    return 1 if answered else 0


def well_formed(reply: Any) -> bool:
    if isinstance(reply, list):
        return bool(reply) and all(well_formed(item) for item in reply)
    return (isinstance(reply, dict) and reply.get("jsonrpc") == "2.0" and "id" in reply
            and (("result" in reply) != ("error" in reply)))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from npud.testing.fake import FakeLoader

    from .conftest import make_config, start_daemon

    running = start_daemon(make_config(tmp_path_factory.mktemp("fuzz"), log_level="WARNING", max_in_flight=64),
                           FakeLoader())
    yield running
    running.stop()


def roundtrip(live: RunningDaemon, line: bytes) -> list[Any]:
    """Send ``line`` then a health probe, half-close, and collect every reply until the daemon closes.

    Replies on one connection may come in any order, so the probe is found by its id; the rest
    are the replies to ``line`` (and nothing may be missing or extra: the daemon closes only after
    writing all pending replies of a half-closed connection).
    """
    probe = "npud-fuzz-probe-7f3e"
    with RawConnection.open(live.socket) as conn:
        conn.send(line + b"\n" + msgspec.json.encode({"jsonrpc": "2.0", "id": probe, "method": "health"}) + b"\n")
        conn.sock.shutdown(socket.SHUT_WR)
        replies: list[Any] = []
        while raw := conn.read_line():
            replies.append(msgspec.json.decode(raw))
    probes = [r for r in replies if isinstance(r, dict) and r.get("id") == probe and "result" in r]
    assert len(probes) == 1 and probes[0]["result"]["status"] == "ready"
    return [r for r in replies if r is not probes[0]]


@FUZZ
@given(st.binary(max_size=300).filter(lambda b: b"\n" not in b and b.strip()))
def test_live_daemon_answers_arbitrary_bytes(live: RunningDaemon, line: bytes) -> None:
    replies = roundtrip(live, line)
    assert len(replies) == expected_replies(line)
    assert all(well_formed(r) for r in replies)


@FUZZ
@given(st.one_of(valid_shaped(), st.lists(valid_shaped(), min_size=1, max_size=4), json_values))
def test_live_daemon_with_hostile_params(live: RunningDaemon, message: Any) -> None:
    line = msgspec.json.encode(message)
    replies = roundtrip(live, line)
    assert len(replies) == expected_replies(line)
    for reply in replies:
        assert well_formed(reply)
        for item in reply if isinstance(reply, list) else [reply]:
            if "error" in item:
                assert item["error"]["code"] != -32603, item  # hostile input is never an internal error


@pytest.mark.parametrize(
    "line",
    [
        b"\x00\x00\x00",
        b'"\x80"',  # invalid UTF-8 inside a string (msgspec raises UnicodeDecodeError)
        b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"\xff\xfe"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"\\u0000\\u0000"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"\\ud800"}}',
        b'{"jsonrpc":"2.0","id":99999999999999999999999999,"method":"health"}',
        b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"x","max_new_tokens":1e308}}',
        b"[" * 100_000,
        b'{"a":' * 10_000,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"generate\",\"params\":{\"job\":\"title\",\"input\":\"\U0001f600\"}}".encode(),
    ],
)
def test_hostile_lines(live: RunningDaemon, line: bytes) -> None:
    replies = roundtrip(live, line)
    assert len(replies) == 1 and well_formed(replies[0])
    if "error" in replies[0]:
        assert replies[0]["error"]["code"] != -32603
