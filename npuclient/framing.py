"""Newline-delimited framing, sans-IO: bytes in, complete lines out, no sockets.

One JSON-RPC message (or batch) per line, compact JSON terminated by ``\\n``; a trailing ``\\r``
is tolerated so that hand-typed input from terminals works. The same class frames both
directions (the daemon reads requests with it, the client reads responses).
"""

from __future__ import annotations

from typing import Final

# A single line may hold a batch, and an input of 6000 code points can take 12 bytes per code
# point once JSON-escaped (a non-BMP character as a \uXXXX\uXXXX surrogate pair). 256 KiB fits a
# few worst-case requests with room to spare, while bounding what one connection can make the
# daemon buffer before it has seen a complete message.
DEFAULT_MAX_LINE_BYTES: Final = 256 * 1024


class LineTooLong(Exception):
    """The peer sent more than ``max_line_bytes`` without a newline."""

    def __init__(self, limit: int, complete_lines: list[bytes] | None = None) -> None:
        super().__init__(f"line exceeds {limit} bytes")
        self.limit = limit
        #: Lines that were complete before the oversize one, so the caller can still answer them.
        self.complete_lines = complete_lines or []


class LineBuffer:
    """Accumulates bytes and yields complete lines without their terminator.

    After :class:`LineTooLong` the buffer is poisoned: the stream can no longer be resynchronised
    reliably, so the caller is expected to close the connection.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._scan_from = 0
        self._failed = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line held back (for slow-client and idle checks)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every line it completed (possibly none)."""
        if self._failed:
            raise LineTooLong(self.max_line_bytes)
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scan_from))
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                return self._fail(lines)
            lines.append(line)
            start = end + 1
            self._scan_from = start
        del self._buffer[:start]
        # Next time, only scan bytes that have not been searched for a newline yet.
        self._scan_from = len(self._buffer)
        # +1: a line of exactly the limit may be waiting for the "\n" after its "\r".
        if len(self._buffer) > self.max_line_bytes + 1:
            return self._fail(lines)
        return lines

    def _fail(self, complete_lines: list[bytes]) -> list[bytes]:
        self._failed = True
        self._buffer.clear()
        raise LineTooLong(self.max_line_bytes, complete_lines)
