"""The loopback HTTP shim: the same five operations as the Unix socket, for existing scripts.

It runs in the daemon's own event loop and calls the same :class:`Dispatcher` as the Unix socket,
so there is one queue, one set of limits and one error model; a separate process talking to the
socket would add a hop, a second failure domain and a second copy of the mapping. HTTP/1.1 is
parsed by h11, never by hand.

TCP has no peer credentials: any local user can connect. The shim therefore only ever binds a
loopback address, sends no CORS headers (a web page cannot read its replies), and can require a
bearer token kept in a file only its owner can read.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import math
import os
import socket
import stat
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import msgspec

from npuclient.errors import (
    DeviceBusy,
    InvalidParams,
    NotReady,
    ParseError,
    QueueFull,
    ShuttingDown,
    TooManyRequests,
)
from npuclient.protocol import (
    ENCODER,
    ErrorObject,
    ErrorResponse,
    GenerateParams,
    HealthResult,
    HttpErrorBody,
    InputParams,
    JobResult,
    ModelsResult,
    Request,
)

from . import __version__
from .engine import StartupError
from .rpc import Dispatcher

log = logging.getLogger("npud.http")

# h11 buffers at most this much of a request head; a body is bounded by the daemon's line limit.
MAX_HEAD_BYTES = 16 * 1024
# Lingering close after an early error reply: discard at most this much for at most this long.
LINGER_S = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024
# An idle keep-alive connection is closed after this long.
KEEPALIVE_IDLE_S = 30.0
# Retry-After (seconds) for 503s whose wait cannot be computed from the queue.
RETRY_NOT_READY_S = 5  # the model failed to load: a restart (systemd) may fix it
RETRY_DEVICE_BUSY_S = 1
RETRY_SHUTTING_DOWN_S = 5


@dataclass(frozen=True)
class Route:
    method: str
    rpc_method: str | None  # None: served by the shim itself (openapi.json, metrics)
    params_type: type[Any] | None
    result_type: type[Any] | None
    summary: str


ROUTES: dict[str, Route] = {
    "/healthz": Route("GET", "health", None, HealthResult, "Daemon and model status (never queued)"),
    "/models": Route("GET", "models", None, ModelsResult, "The loaded model, its limits and jobs"),
    "/v1/worker/generate": Route("POST", "generate", GenerateParams, JobResult, "Run a job"),
    "/v1/worker/extract-memory-candidates": Route(
        "POST", "extract_memory_candidates", InputParams, JobResult, "Memory candidates from a text"),
    "/v1/worker/condense-notification": Route(
        "POST", "condense_notification", InputParams, JobResult, "A notification in one sentence"),
    "/openapi.json": Route("GET", None, None, None, "This document"),
    "/metrics": Route("GET", None, None, None, "Prometheus text exposition"),
}

# JSON-RPC error code -> HTTP status.
STATUS_BY_CODE = {
    -32700: 400, -32600: 400, -32602: 400, -32601: 404,
    -32000: 503, -32001: 503, -32005: 503, -32006: 503,
    -32002: 500, -32003: 500, -32603: 500, -32004: 403,
    -32007: 504, -32008: 409, -32009: 503,
}


class HttpReply(msgspec.Struct):
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def check_loopback(host: str) -> str:
    """The address to bind, or StartupError when it is not loopback (the shim is local only)."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise StartupError(f"--host {host}: not an IP address; the HTTP shim binds loopback only") from None
    if not ip.is_loopback:
        raise StartupError(f"--host {host}: refusing a non-loopback address; the HTTP shim is local only")
    return address


def bind_http_socket(host: str, port: int) -> socket.socket:
    address = check_loopback(host)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        sock = socket.create_server((address, port), family=family, reuse_port=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"HTTP port {address}:{port} is already in use (use --port, or --no-http)") from None
        raise StartupError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def read_token_file(path: str) -> bytes:
    """The bearer token; the file must belong to us and be unreadable by anyone else."""
    try:
        info = os.stat(path)
        with open(path, "rb") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise StartupError(f"token file {path}: {exc.strerror}") from None
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StartupError(f"token file {path} must be owned by this user with mode 0600 or stricter")
    if len(token) < 16:
        raise StartupError(f"token file {path}: the token must be at least 16 characters")
    return token


def _error_body(error: ErrorObject) -> bytes:
    return ENCODER.encode(HttpErrorBody(error=error))


def _retry_after(error: ErrorObject) -> int | None:
    if error.code == QueueFull.code:
        millis = QueueFull(error.message, error.data).retry_after_ms
        return max(1, math.ceil((millis or 1000) / 1000))
    if error.code == NotReady.code:
        return RETRY_NOT_READY_S
    if error.code == DeviceBusy.code:
        return RETRY_DEVICE_BUSY_S
    if error.code == ShuttingDown.code:
        return RETRY_SHUTTING_DOWN_S
    return None


def error_reply(error: ErrorObject, status: int | None = None) -> HttpReply:
    headers = [(b"content-type", b"application/json")]
    retry = _retry_after(error)
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    return HttpReply(status or STATUS_BY_CODE.get(error.code, 500), _error_body(error), headers)


def plain_error(status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None) -> HttpReply:
    """An HTTP-level error (404, 405, 413, 415, 401) in the same body shape."""
    body = _error_body(ErrorObject(code=-32600, message=message))
    return HttpReply(status, body, [(b"content-type", b"application/json"), *(extra_headers or [])])


class HttpShim:
    def __init__(self, dispatcher: Dispatcher, max_body_bytes: int, token: bytes | None,
                 max_connections: int = 256) -> None:
        self._dispatcher = dispatcher
        self._max_body = max_body_bytes
        self._max_connections = max_connections
        self._token = token
        self._openapi = ENCODER.encode(openapi_document())
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def active_connections(self) -> int:
        return len(self._writers)

    def close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies are complete messages
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        if len(self._writers) >= self._max_connections:
            reply = error_reply(TooManyRequests(f"too many connections ({self._max_connections})").to_object(), 503)
            try:
                await self._one_exchange(conn, reader)
                await self._send(conn, writer, reply)
            except (ConnectionError, h11.ProtocolError, asyncio.TimeoutError):
                pass
            writer.close()
            return
        self._writers.add(writer)
        unread_body = False
        try:
            while True:
                reply, keep_going = await self._one_exchange(conn, reader)
                if reply is None:
                    break
                await self._send(conn, writer, reply)
                if not keep_going or conn.our_state is h11.MUST_CLOSE:
                    unread_body = not keep_going
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.LocalProtocolError, asyncio.TimeoutError):
            pass
        finally:
            if unread_body:
                await _lingering_close(reader, writer)
            self._writers.discard(writer)
            writer.close()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(65536), KEEPALIVE_IDLE_S)
            conn.receive_data(data)

    async def _one_exchange(self, conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[HttpReply | None, bool]:
        """Read one request and produce its reply; (None, False) when the client is gone."""
        try:
            event = await self._next_event(conn, reader)
            if not isinstance(event, h11.Request):
                return None, False
            declared = _content_length(event)
            if declared is not None and declared > self._max_body:
                return plain_error(413, f"body larger than {self._max_body} bytes"), False
            body = bytearray()
            while True:
                part = await self._next_event(conn, reader)
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > self._max_body:
                        return plain_error(413, f"body larger than {self._max_body} bytes"), False
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return None, False
        except h11.RemoteProtocolError as exc:
            if conn.their_state is h11.ERROR and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                return plain_error(exc.error_status_hint, "malformed HTTP request"), False
            return None, False
        return await self.respond(event, bytes(body)), True

    async def respond(self, request: h11.Request, body: bytes) -> HttpReply:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        route = ROUTES.get(path)
        if route is None:
            return plain_error(404, "no such endpoint")
        if request.method.decode() != route.method:
            return plain_error(405, f"use {route.method}", [(b"allow", route.method.encode())])
        if self._token is not None and not self._authorized(request):
            return plain_error(401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
        if path == "/metrics":
            return HttpReply(200, self._metrics_text().encode(),
                             [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])
        if route.rpc_method is None:
            return HttpReply(200, self._openapi, [(b"content-type", b"application/json")])
        params: Any = msgspec.UNSET
        if route.params_type is not None:
            if not _is_json(request):
                return plain_error(415, "send Content-Type: application/json")
            try:
                params = msgspec.json.decode(body)
            except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                return error_reply(ParseError("parse error: the body is not valid JSON").to_object())
            if not isinstance(params, dict):
                return error_reply(InvalidParams("the body must be a JSON object").to_object())
        rpc = Request(jsonrpc="2.0", method=route.rpc_method, params=params, id=None)
        reply = await self._dispatcher.call(rpc, None, transport="http")
        if isinstance(reply, ErrorResponse):
            return error_reply(reply.error)
        return HttpReply(200, ENCODER.encode(reply.result), [(b"content-type", b"application/json")])

    def _metrics_text(self) -> str:
        snap = self._dispatcher.worker.snapshot()
        return self._dispatcher.metrics.exposition(snap.queue_depth, self._dispatcher.worker.capacity, snap.running,
                                                   snap.load_time_ms, snap.status)

    def _authorized(self, request: h11.Request) -> bool:
        for name, value in request.headers:
            if name == b"authorization" and value.startswith(b"Bearer "):
                return hmac.compare_digest(value[7:].strip(), self._token or b"")
        return False

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: HttpReply) -> None:
        headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode()),
                   (b"server", f"npud/{__version__}".encode()), (b"cache-control", b"no-store")]
        reason = HTTPStatus(reply.status).phrase.encode()
        # One write: head and body in separate segments would meet the client's delayed ACK
        # (Nagle), a 40 ms stall per request (measured by the benchmark before this was joined).
        writer.write(b"".join((
            conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason)) or b"",
            conn.send(h11.Data(data=reply.body)) or b"",
            conn.send(h11.EndOfMessage()) or b"",
        )))
        await writer.drain()


async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an early error (413, 400) the client may still be sending its body. Closing with
    unread data makes TCP reset the connection, and the client may lose our reply; so half-close,
    then read and discard for a bounded time before closing."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        deadline = asyncio.get_running_loop().time() + LINGER_S
        discarded = 0
        while discarded < LINGER_MAX_BYTES:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
            if not chunk:
                break
            discarded += len(chunk)
    except (ConnectionError, asyncio.TimeoutError, OSError):
        pass


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _is_json(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


# ---------------------------------------------------------------- OpenAPI


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1, generated from the msgspec wire types (never written by hand)."""
    types = [HealthResult, ModelsResult, JobResult, GenerateParams, InputParams, HttpErrorBody]
    _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")

    def ref(cls: type[Any]) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{cls.__name__}"}

    error_content = {"application/json": {"schema": ref(HttpErrorBody)}}
    paths: dict[str, Any] = {}
    for path, route in ROUTES.items():
        if route.rpc_method is None:
            continue
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {"application/json": {"schema": ref(route.result_type)}}},  # type: ignore[arg-type]
            "401": {"description": "Missing or wrong bearer token", "content": error_content},
            "500": {"description": "Generation failed, NPU execution not verified, or internal error",
                    "content": error_content},
            "503": {"description": "Queue full, model not ready, NPU busy or shutting down (with Retry-After)",
                    "content": error_content},
        }
        operation: dict[str, Any] = {"operationId": route.rpc_method, "summary": route.summary,
                                     "responses": responses}
        if route.params_type is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": ref(route.params_type)}}}
            responses["400"] = {"description": "Invalid JSON or params", "content": error_content}
            responses["413"] = {"description": "Body too large", "content": error_content}
            responses["415"] = {"description": "Content-Type is not application/json", "content": error_content}
        paths[path] = {route.method.lower(): operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "npud HTTP shim", "version": __version__,
                 "description": "Loopback-only HTTP access to npud's operations; see CONTRACT.md."},
        "servers": [{"url": "http://127.0.0.1:18820"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }

