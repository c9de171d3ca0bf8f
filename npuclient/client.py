"""A small blocking client for npud's Unix socket.

One connection, reused across calls; one call at a time per client (a lock makes concurrent use
from several threads safe, it serialises them). Results come back as the typed Structs of
:mod:`npuclient.protocol`; errors as the exceptions of :mod:`npuclient.errors`.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from .errors import NpuClientError, error_from_object
from .framing import LineBuffer
from .protocol import (
    JSONRPC_VERSION,
    HealthResult,
    JobName,
    JobResult,
    ModelsResult,
    Response,
    encode_line,
)

DEFAULT_SOCKET = "@npud"
SOCKET_ENV = "OV_GENAI_NPU_SOCKET"
# Replies are small; this only bounds what a misbehaving server can make us buffer.
MAX_REPLY_BYTES = 1024 * 1024

T = TypeVar("T")

_RESPONSE = msgspec.json.Decoder(Response)


class DaemonUnavailable(NpuClientError):
    """npud is not running or not reachable on the socket."""


class ProtocolViolation(NpuClientError):
    """The server sent something that is not a valid JSON-RPC reply to our request."""


class _OutgoingRequest(msgspec.Struct, omit_defaults=True):
    jsonrpc: str
    method: str
    id: int
    params: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


def socket_address(name: str) -> str | bytes:
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def default_socket(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV) or DEFAULT_SOCKET


class Client:
    """Blocking JSON-RPC client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, socket_name: str | None = None, timeout: float | None = 60.0) -> None:
        self.socket_name = socket_name or default_socket()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = LineBuffer(MAX_REPLY_BYTES)
        self._pending: list[bytes] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------ operations

    def health(self) -> HealthResult:
        return self.call("health", None, HealthResult)

    def models(self) -> ModelsResult:
        return self.call("models", None, ModelsResult)

    def generate(self, job: JobName, input: str, max_new_tokens: int | None = None) -> JobResult:
        params: dict[str, Any] = {"job": job, "input": input}
        if max_new_tokens is not None:
            params["max_new_tokens"] = max_new_tokens
        return self.call("generate", params, JobResult)

    def extract_memory_candidates(self, input: str) -> JobResult:
        return self.call("extract_memory_candidates", {"input": input}, JobResult)

    def condense_notification(self, input: str) -> JobResult:
        return self.call("condense_notification", {"input": input}, JobResult)

    # ------------------------------------------------------------ transport

    def call(self, method: str, params: dict[str, Any] | None, result_type: type[T]) -> T:
        with self._lock:
            request_id = next(self._ids)
            request = _OutgoingRequest(JSONRPC_VERSION, method, request_id,
                                       params if params is not None else msgspec.UNSET)
            reply = self._roundtrip(encode_line(request), request_id)
        if reply.error is not msgspec.UNSET:
            raise error_from_object(reply.error)
        if reply.result is msgspec.UNSET:
            raise ProtocolViolation("reply has neither result nor error")
        try:
            return msgspec.json.decode(reply.result, type=result_type)
        except msgspec.ValidationError as exc:
            raise ProtocolViolation(f"unexpected result for {method}: {exc}") from None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(socket_address(self.socket_name))
            except OSError as exc:
                sock.close()
                raise DaemonUnavailable(
                    f"cannot connect to npud on {self.socket_name}: {exc.strerror or exc}. "
                    "Is it running? (systemctl --user start npud.socket)"
                ) from None
            self._sock = sock
            self._buffer = LineBuffer(MAX_REPLY_BYTES)
            self._pending = []
        return self._sock

    def _roundtrip(self, data: bytes, request_id: int) -> Response:
        sock = self._connect()
        try:
            sock.sendall(data)
            while True:
                reply = self._read_reply(sock)
                if reply.id == request_id or reply.id is None:
                    return reply
        except (OSError, TimeoutError) as exc:
            self.close()
            if isinstance(exc, TimeoutError):
                raise NpuClientError(f"no reply from npud within {self.timeout}s") from None
            raise DaemonUnavailable(f"connection to npud lost: {exc}") from None

    def _read_reply(self, sock: socket.socket) -> Response:
        while not self._pending:
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise DaemonUnavailable("npud closed the connection")
            self._pending.extend(self._buffer.feed(chunk))
        line = self._pending.pop(0)
        try:
            return _RESPONSE.decode(line)
        except msgspec.DecodeError as exc:
            self.close()
            raise ProtocolViolation(f"invalid reply from npud: {exc}") from None
