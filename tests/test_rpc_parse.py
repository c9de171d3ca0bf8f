"""parse_line and parameter checks as tables: bytes in, requests or error replies out."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from npuclient.errors import InvalidParams
from npuclient.protocol import MAX_INPUT_CHARS, ErrorResponse, GenerateParams, Request
from npud.jobs import JOBS
from npud.rpc import MAX_BATCH, ParsedLine, check_input, check_max_new_tokens, convert_params, parse_line


def _error(line: bytes) -> ErrorResponse:
    parsed = parse_line(line)
    if isinstance(parsed, ErrorResponse):
        return parsed
    (item,) = parsed.items
    assert isinstance(item, ErrorResponse)
    return item


@pytest.mark.parametrize(
    ("line", "code", "request_id"),
    [
        (b"{not json", -32700, None),
        (b"", -32700, None),
        (b"\xff\xfe", -32700, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"health"', -32700, None),  # truncated
        (b"[" * 20000 + b"]" * 20000, -32700, None),  # nested too deeply
        (b'"\\ud800"', -32700, None),  # lone surrogate
        (b'"\x80"', -32700, None),  # invalid UTF-8 inside a string
        (b"[]", -32600, None),  # empty batch
        (b"42", -32600, None),
        (b'{"jsonrpc":"1.0","id":1,"method":"health"}', -32600, 1),
        (b'{"id":7,"method":"health"}', -32600, 7),  # no jsonrpc member
        (b'{"jsonrpc":"2.0","id":"x","method":5}', -32600, "x"),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"health"}', -32600, None),  # fractional id
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"health"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"health","params":"x"}', -32600, 1),
        (b'{"jsonrpc":"2.0","id":1,"method":"health","extra":true}', -32600, 1),
    ],
)
def test_invalid_lines(line: bytes, code: int, request_id: Any) -> None:
    error = _error(line)
    assert error.error.code == code
    assert error.id == request_id


def test_valid_request_and_notification() -> None:
    parsed = parse_line(b'{"jsonrpc":"2.0","id":"a","method":"health"}')
    assert isinstance(parsed, ParsedLine) and not parsed.is_batch
    (request,) = parsed.items
    assert isinstance(request, Request) and request.id == "a" and not request.is_notification
    parsed = parse_line(b'{"jsonrpc":"2.0","method":"health"}')
    assert isinstance(parsed, ParsedLine)
    assert isinstance(parsed.items[0], Request) and parsed.items[0].is_notification
    parsed = parse_line(b'{"jsonrpc":"2.0","id":null,"method":"health"}')
    assert isinstance(parsed, ParsedLine)
    assert isinstance(parsed.items[0], Request) and not parsed.items[0].is_notification


def test_batch_mixes_valid_and_invalid_items() -> None:
    parsed = parse_line(b'[{"jsonrpc":"2.0","id":1,"method":"health"}, 1, {"jsonrpc":"2.0","method":"x"}]')
    assert isinstance(parsed, ParsedLine) and parsed.is_batch
    kinds = [type(item).__name__ for item in parsed.items]
    assert kinds == ["Request", "ErrorResponse", "Request"]


def test_batch_limit() -> None:
    ok = b"[" + b",".join([b'{"jsonrpc":"2.0","id":1,"method":"health"}'] * MAX_BATCH) + b"]"
    assert isinstance(parse_line(ok), ParsedLine)
    too_many = b"[" + b",".join([b'{"jsonrpc":"2.0","id":1,"method":"health"}'] * (MAX_BATCH + 1)) + b"]"
    error = parse_line(too_many)
    assert isinstance(error, ErrorResponse) and error.error.code == -32600
    assert msgspec.to_builtins(error.error.data) == {
        "limit": MAX_BATCH, "actual": MAX_BATCH + 1, "unit": "requests", "field": "batch"}


def _request(params: Any) -> Request:
    return Request(jsonrpc="2.0", method="generate", params=params, id=1)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"input": "x"}, "missing required field `job`"),
        ({"job": "title"}, "missing required field `input`"),
        ({"job": "poem", "input": "x"}, "Invalid enum value 'poem'"),
        ({"job": "title", "input": 5}, "Expected `str`, got `int`"),
        ({"job": "title", "input": "x", "max_new_tokens": "5"}, "Expected `int`, got `str`"),
        ({"job": "title", "input": "x", "max_new_tokens": True}, "Expected `int`, got `bool`"),
        ({"job": "title", "input": "x", "temperature": 1}, "unknown field `temperature`"),
        (["title", "x"], "params must be an object"),
    ],
)
def test_param_errors(params: Any, fragment: str) -> None:
    with pytest.raises(InvalidParams) as info:
        convert_params(_request(params), GenerateParams)
    assert fragment in info.value.message


def test_input_checks() -> None:
    check_input("x" * MAX_INPUT_CHARS)
    for empty in ("", "   \n\t"):
        with pytest.raises(InvalidParams, match="must not be empty"):
            check_input(empty)
    with pytest.raises(InvalidParams) as info:
        check_input("é" * (MAX_INPUT_CHARS + 1))  # characters, not bytes
    assert (info.value.limit, info.value.actual) == (MAX_INPUT_CHARS, MAX_INPUT_CHARS + 1)


@pytest.mark.parametrize("value", [0, -1, 33, 10**30])
def test_max_new_tokens_out_of_range(value: int) -> None:
    with pytest.raises(InvalidParams) as info:
        check_max_new_tokens(JOBS["title"], value)
    assert info.value.limit == JOBS["title"].max_new_tokens
    assert info.value.actual == value


def test_max_new_tokens_in_range() -> None:
    for value in (None, 1, JOBS["title"].max_new_tokens):
        check_max_new_tokens(JOBS["title"], value)
    check_max_new_tokens(JOBS["summary"], 256)
