"""LineBuffer as a table: bytes in, lines out, no sockets."""

from __future__ import annotations

import pytest

from npuclient.framing import LineBuffer, LineTooLong


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b'{"a":1}\n'], [b'{"a":1}']),
        ([b'{"a":1}\r\n'], [b'{"a":1}']),  # a trailing CR is tolerated
        ([b'{"a"', b":1}\n"], [b'{"a":1}']),  # split across reads
        ([b"one\ntwo\nthr", b"ee\n"], [b"one", b"two", b"three"]),
        ([b"no eol"], []),
        ([b"x" * 10 + b"\r", b"\n"], [b"x" * 10]),  # CR at the limit, newline in the next read
        ([b"\n"], [b""]),  # blank lines are returned; the server skips them
        ([b"a\r\r\n"], [b"a\r"]),  # only one trailing CR is removed
        ([b"x" * 10 + b"\n"], [b"x" * 10]),  # exactly at the limit
    ],
)
def test_lines(chunks: list[bytes], expected: list[bytes]) -> None:
    buffer = LineBuffer(max_line_bytes=10)
    got: list[bytes] = []
    for chunk in chunks:
        got.extend(buffer.feed(chunk))
    assert got == expected


def test_line_over_limit_without_newline_fails_before_buffering_more() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    buffer.feed(b"x" * 11)  # the limit plus room for a "\r"
    with pytest.raises(LineTooLong) as info:
        buffer.feed(b"x")
    assert info.value.limit == 10
    assert buffer.pending_bytes == 0  # the oversize data is dropped, not kept in memory


def test_complete_lines_before_an_oversize_one_are_kept() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    with pytest.raises(LineTooLong) as info:
        buffer.feed(b"ok\n" + b"y" * 11 + b"\n")
    assert info.value.complete_lines == [b"ok"]


def test_buffer_is_poisoned_after_overflow() -> None:
    buffer = LineBuffer(max_line_bytes=4)
    with pytest.raises(LineTooLong):
        buffer.feed(b"toolong\n")
    with pytest.raises(LineTooLong):
        buffer.feed(b"ok\n")


def test_many_small_chunks_scan_linearly() -> None:
    buffer = LineBuffer(max_line_bytes=100_000)
    for _ in range(50_000):
        assert buffer.feed(b"x") == []
    assert buffer.feed(b"\n") == [b"x" * 50_000]
