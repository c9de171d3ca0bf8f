"""Clients for npud's Unix socket: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both keep one connection and reuse it across calls. If the daemon restarted between two calls
(socket activation starts a fresh one), the stale connection is noticed before sending and a new
one is opened once, transparently; a connection that dies *after* a request was sent is reported
(:class:`DaemonUnavailable`), never retried, because the job may already have run.

Every new connection is checked before a byte is sent: the listening process must run as this
user, root, or a configured server user (:mod:`npuclient.trust`), else :class:`ServerNotTrusted`.

A call that ends without its reply (timeout, task cancelled, interrupted) drops the connection:
npud withdraws the jobs of a closed connection, and no late reply can reach the next call.

Results are the typed Structs of :mod:`npuclient.protocol`; server errors are raised as the
exceptions of :mod:`npuclient.errors`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from .errors import (
    CallTimeout,
    DaemonUnavailable,
    InvalidServerUid,
    NpuClientError,
    ProtocolViolation,
    ServerNotTrusted,
    error_from_object,
)
from .framing import LineBuffer, LineTooLong
from .protocol import (
    JSONRPC_VERSION,
    HealthResult,
    JobName,
    JobResult,
    ModelsResult,
    Response,
    encode_line,
)
from .trust import SERVER_UID_ENV, ServerTrust, ServerUids

__all__ = [
    "DEFAULT_SOCKET",
    "SERVER_UID_ENV",
    "SOCKET_ENV",
    "AsyncClient",
    "CallTimeout",
    "Client",
    "DaemonUnavailable",
    "InvalidServerUid",
    "NpuClientError",
    "ProtocolViolation",
    "ServerNotTrusted",
    "default_socket",
    "socket_address",
]

DEFAULT_SOCKET = "@npud"
SOCKET_ENV = "OV_GENAI_NPU_SOCKET"
DEFAULT_TIMEOUT_S = 120.0
# Replies are small (a result is at most a few KiB); this only bounds what a misbehaving server
# can make a client buffer.
MAX_REPLY_BYTES = 1024 * 1024
START_HINT = "Is it running? (systemctl --user start npud.socket)"

T = TypeVar("T")

_RESPONSE = msgspec.json.Decoder(Response)


class _OutgoingRequest(msgspec.Struct, omit_defaults=True):
    jsonrpc: str
    method: str
    id: int
    params: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


def socket_address(name: str) -> str | bytes:
    """``@name`` is the abstract namespace (leading NUL byte); anything else a path."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def default_socket(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV) or DEFAULT_SOCKET


def generate_params(job: JobName, input: str, max_new_tokens: int | None = None,
                    timeout_ms: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"job": job, "input": input}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    if timeout_ms is not None:
        params["timeout_ms"] = timeout_ms
    return params


def input_params(input: str, timeout_ms: int | None = None) -> dict[str, Any]:
    """Params of ``extract_memory_candidates`` and ``condense_notification``."""
    params: dict[str, Any] = {"input": input}
    if timeout_ms is not None:
        params["timeout_ms"] = timeout_ms
    return params


def _decode_result(reply: Response, method: str, result_type: type[T]) -> T:
    if reply.error is not msgspec.UNSET:
        raise error_from_object(reply.error)
    if reply.result is msgspec.UNSET:
        raise ProtocolViolation("reply has neither result nor error")
    try:
        return msgspec.json.decode(reply.result, type=result_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolViolation(f"unexpected result for {method}: {exc}") from None


def _decode_reply(line: bytes) -> Response:
    try:
        return _RESPONSE.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolViolation(f"invalid reply from npud: {exc}") from None


def _request_line(method: str, params: dict[str, Any] | None, request_id: int) -> bytes:
    return encode_line(_OutgoingRequest(JSONRPC_VERSION, method, request_id,
                                        params if params is not None else msgspec.UNSET))


class _ReplyLines:
    """Sans-IO side of both clients: bytes from the socket in, complete reply lines out."""

    def __init__(self) -> None:
        self._buffer = LineBuffer(MAX_REPLY_BYTES)
        self._lines: list[bytes] = []

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def feed(self, chunk: bytes) -> None:
        try:
            self._lines.extend(line for line in self._buffer.feed(chunk) if line.strip())
        except LineTooLong:
            raise ProtocolViolation(f"reply longer than {MAX_REPLY_BYTES} bytes") from None

    def pop(self) -> bytes | None:
        return self._lines.pop(0) if self._lines else None


def _unavailable(name: str, exc: OSError) -> DaemonUnavailable:
    return DaemonUnavailable(f"cannot connect to npud on {name}: {exc.strerror or exc}. {START_HINT}")


def _check_server(trust: ServerTrust, sock: socket.socket, name: str) -> None:
    """Refuse an untrusted listener before anything is sent; the socket is closed on refusal."""
    try:
        trust.check(sock, name)
    except OSError as exc:
        sock.close()
        raise DaemonUnavailable(f"cannot read the credentials of the server on {name}: {exc}") from None
    except ServerNotTrusted:
        sock.close()
        raise


def check_timeout(timeout: float | None) -> float | None:
    """A client's wait in seconds: None (for ever) or a finite number above 0. ValueError
    otherwise: 0 made the socket non-blocking (a job then failed as "connection lost"), and -1,
    nan or inf raised from deep inside the socket module."""
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be None or a number of seconds above 0, not {timeout!r}")
    return timeout


class Client:
    """Blocking client. Thread-safe: a lock serialises calls on the one connection.

    Use as a context manager or call :meth:`close`. ``timeout`` (seconds, per call; ``None``
    waits forever) can be overridden on each method; it is how long this client waits, while a
    job's ``timeout_ms`` is its deadline on the daemon. ``server_uids`` (uids or user names, or
    a comma-separated string) are trusted as the server besides this user and root; without it,
    ``$OV_GENAI_NPU_SERVER_UID`` is read. An unknown user name raises :class:`InvalidServerUid`.
    """

    def __init__(self, socket_name: str | None = None, timeout: float | None = DEFAULT_TIMEOUT_S, *,
                 server_uids: ServerUids | None = None) -> None:
        self.socket_name = socket_name or default_socket()
        self.timeout = check_timeout(timeout)
        self.trust = ServerTrust.for_this_process(server_uids)
        self._sock: socket.socket | None = None
        self._replies = _ReplyLines()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def health(self, timeout: float | None = None) -> HealthResult:
        return self.call("health", None, HealthResult, timeout)

    def models(self, timeout: float | None = None) -> ModelsResult:
        return self.call("models", None, ModelsResult, timeout)

    def generate(self, job: JobName, input: str, max_new_tokens: int | None = None,
                 timeout: float | None = None, *, timeout_ms: int | None = None) -> JobResult:
        params = generate_params(job, input, max_new_tokens, timeout_ms)
        return self.call("generate", params, JobResult, timeout)

    def extract_memory_candidates(self, input: str, timeout: float | None = None, *,
                                  timeout_ms: int | None = None) -> JobResult:
        return self.call("extract_memory_candidates", input_params(input, timeout_ms), JobResult, timeout)

    def condense_notification(self, input: str, timeout: float | None = None, *,
                              timeout_ms: int | None = None) -> JobResult:
        return self.call("condense_notification", input_params(input, timeout_ms), JobResult, timeout)

    def call(self, method: str, params: dict[str, Any] | None, result_type: type[T],
             timeout: float | None = None) -> T:
        """Send one request and wait for its reply."""
        limit = self.timeout if timeout is None else check_timeout(timeout)
        with self._lock:
            request_id = next(self._ids)
            data = _request_line(method, params, request_id)
            try:
                reply = self._roundtrip(data, request_id, limit)
            except BaseException:
                # Whatever ended the call without its reply (timeout, lost connection, a bad reply,
                # KeyboardInterrupt), the request may still be pending on the daemon and its late
                # reply would sit in front of the next call's: closing the connection answers both,
                # as npud withdraws the jobs of a closed connection.
                self._drop()
                raise
        return _decode_result(reply, method, result_type)

    # ------------------------------------------------------------ transport

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._replies = _ReplyLines()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Blocking: a Unix socket whose backlog is momentarily full makes a non-blocking connect
            # fail with EAGAIN, while a blocking one waits for the daemon to accept.
            sock.connect(socket_address(self.socket_name))
        except OSError as exc:
            sock.close()
            raise _unavailable(self.socket_name, exc) from None
        _check_server(self.trust, sock, self.socket_name)
        self._sock = sock
        return sock

    def _usable_connection(self) -> socket.socket:
        """The open connection, or a new one if there is none or the daemon closed ours."""
        sock = self._sock
        if sock is not None and not self._replies.pending:
            sock.settimeout(0)  # with a timeout set, Python would poll first and ignore DONTWAIT
            try:
                peeked = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                peeked = b"x"  # nothing to read: the connection is alive
            except OSError:
                peeked = b""
            if not peeked:  # EOF or error: the daemon restarted since our last call
                self._drop()
                sock = None
        return sock if sock is not None else self._connect()

    def _roundtrip(self, data: bytes, request_id: int, timeout: float | None) -> Response:
        sock = self._usable_connection()
        sock.settimeout(timeout)
        try:
            sock.sendall(data)
        except OSError as exc:
            # Nothing reached the daemon: safe to reconnect and send once more.
            self._drop()
            sock = self._connect()
            sock.settimeout(timeout)
            try:
                sock.sendall(data)
            except OSError:
                raise DaemonUnavailable(f"cannot send to npud: {exc}") from None
        try:
            while True:
                reply = _decode_reply(self._read_line(sock))
                if reply.id == request_id or reply.id is None:
                    return reply
        except TimeoutError:
            raise CallTimeout(f"no reply from npud within {timeout}s") from None
        except OSError as exc:
            raise DaemonUnavailable(f"connection to npud lost: {exc}") from None

    def _read_line(self, sock: socket.socket) -> bytes:
        while (line := self._replies.pop()) is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise DaemonUnavailable("npud closed the connection before replying")
            self._replies.feed(chunk)
        return line


class AsyncClient:
    """asyncio client with the same operations and options; calls on one client are serialised by
    a lock. Cancelling a call (``task.cancel()``, ``asyncio.wait_for``, ``asyncio.timeout``) drops
    the connection, so npud withdraws the job instead of running it for nobody."""

    def __init__(self, socket_name: str | None = None, timeout: float | None = DEFAULT_TIMEOUT_S, *,
                 server_uids: ServerUids | None = None) -> None:
        self.socket_name = socket_name or default_socket()
        self.timeout = check_timeout(timeout)
        self.trust = ServerTrust.for_this_process(server_uids)
        self._sock: socket.socket | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies = _ReplyLines()
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def health(self, timeout: float | None = None) -> HealthResult:
        return await self.call("health", None, HealthResult, timeout)

    async def models(self, timeout: float | None = None) -> ModelsResult:
        return await self.call("models", None, ModelsResult, timeout)

    async def generate(self, job: JobName, input: str, max_new_tokens: int | None = None,
                       timeout: float | None = None, *, timeout_ms: int | None = None) -> JobResult:
        params = generate_params(job, input, max_new_tokens, timeout_ms)
        return await self.call("generate", params, JobResult, timeout)

    async def extract_memory_candidates(self, input: str, timeout: float | None = None, *,
                                        timeout_ms: int | None = None) -> JobResult:
        return await self.call("extract_memory_candidates", input_params(input, timeout_ms), JobResult, timeout)

    async def condense_notification(self, input: str, timeout: float | None = None, *,
                                    timeout_ms: int | None = None) -> JobResult:
        return await self.call("condense_notification", input_params(input, timeout_ms), JobResult, timeout)

    async def call(self, method: str, params: dict[str, Any] | None, result_type: type[T],
                   timeout: float | None = None) -> T:
        limit = self.timeout if timeout is None else check_timeout(timeout)
        async with self._lock:
            request_id = next(self._ids)
            data = _request_line(method, params, request_id)
            try:
                reply = await asyncio.wait_for(self._roundtrip(data, request_id), limit)
            except asyncio.TimeoutError:
                self._abort()
                raise CallTimeout(f"no reply from npud within {limit}s") from None
            except BaseException:
                # Cancelled (task.cancel, an outer wait_for or asyncio.timeout) or failed without our
                # reply: the request may still be queued or running on the daemon. Closing the
                # connection withdraws it there and keeps its late reply from the next call. Done
                # synchronously: a cancelled task should not wait on more I/O.
                self._abort()
                raise
        return _decode_result(reply, method, result_type)

    def _abort(self) -> None:
        """Close the connection now; the daemon sees the full close at once."""
        sock, writer = self._sock, self._writer
        self._sock, self._reader, self._writer = None, None, None
        self._replies = _ReplyLines()
        if sock is not None:
            try:
                # The transport closes its socket on the loop's next turn, which may never come
                # (asyncio.run tearing down); shutting down both directions tells npud right away.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if writer is not None:
            writer.transport.abort()

    async def _drop(self) -> None:
        writer, self._sock, self._reader, self._writer = self._writer, None, None, None
        self._replies = _ReplyLines()
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, socket_address(self.socket_name))
        except OSError as exc:
            sock.close()
            raise _unavailable(self.socket_name, exc) from None
        except BaseException:
            sock.close()
            raise
        _check_server(self.trust, sock, self.socket_name)
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    async def _roundtrip(self, data: bytes, request_id: int) -> Response:
        if self._writer is not None and self._reader is not None and self._reader.at_eof() and not self._replies.pending:
            await self._drop()  # the daemon restarted since our last call
        if self._writer is None:
            await self._connect()
        try:
            self._send(data)
            await self._drain()
        except OSError:
            await self._drop()
            await self._connect()
            try:
                self._send(data)
                await self._drain()
            except OSError as exc:
                raise DaemonUnavailable(f"cannot send to npud: {exc}") from None
        try:
            while True:
                reply = _decode_reply(await self._read_line())
                if reply.id == request_id or reply.id is None:
                    return reply
        except OSError as exc:
            raise DaemonUnavailable(f"connection to npud lost: {exc}") from None

    def _send(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionResetError("not connected")
        self._writer.write(data)

    async def _drain(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    async def _read_line(self) -> bytes:
        while (line := self._replies.pop()) is None:
            if self._reader is None:
                raise DaemonUnavailable("not connected")
            chunk = await self._reader.read(65536)
            if not chunk:
                raise DaemonUnavailable("npud closed the connection before replying")
            self._replies.feed(chunk)
        return line
