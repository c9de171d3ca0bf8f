"""The loopback HTTP shim: the same five operations as the Unix socket, for existing scripts.

It runs in the daemon's own event loop and calls the same :class:`Dispatcher` as the Unix socket,
so there is one queue, one set of limits and one error model; a separate process talking to the
socket would add a hop, a second failure domain and a second copy of the mapping. HTTP/1.1 is
parsed by h11, never by hand.

TCP has no peer credentials: any local user can connect. The shim therefore only ever binds a
loopback address, sends no CORS headers (a web page cannot read its replies), answers only
requests addressed to a loopback name on its own port (a web page that rebinds its DNS name to
127.0.0.1 is refused before any work: DNS rebinding), and can require a bearer token kept in a
file only its owner can read.

Every connection is bounded like a socket connection: it is counted (also while it is being
refused), each request head, body and reply write has a deadline, every refusal happens before
the dispatcher sees the request, and a client that goes away while its job runs cancels it.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import math
import os
import re
import select
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
import msgspec

from npuclient.errors import (
    DeviceBusy,
    InvalidParams,
    InvalidRequest,
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
    LimitData,
    ModelsResult,
    Request,
)

from . import __version__
from .config import Config
from .engine import StartupError
from .rpc import Dispatcher, Reply

log = logging.getLogger("npud.http")

# A request head (request line and headers) is limited to this many bytes: 431 beyond.
MAX_HEAD_BYTES = 16 * 1024
# Lingering close after an early error reply: discard at most this much for at most this long.
LINGER_S = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024
# A keep-alive connection waits this long for the first byte of its next request, then is closed.
KEEPALIVE_IDLE_S = 30.0
# Connections over --max-connections are answered 503 while at most this many are being refused;
# beyond that they are reset at once, so a flood cannot hold descriptors in the refusal path.
MAX_REFUSING = 32
# A token is a line of some tens of characters; a larger file is a wrong path, never read whole.
MAX_TOKEN_FILE_BYTES = 4096
# After the shutdown deadline, connections are aborted; their handlers end within this much.
ABORT_GRACE_S = 1.0
READ_CHUNK = 65536
# While a job runs and the client has pipelined more than we buffer, the connection is no longer
# read; a hang-up is then noticed by polling the socket (POLLRDHUP) this often.
HANGUP_POLL_S = 0.5
# Retry-After (seconds) for 503s whose wait cannot be computed from the queue.
RETRY_NOT_READY_S = 5  # the model failed to load: a restart (systemd) may fix it
RETRY_DEVICE_BUSY_S = 1
RETRY_SHUTTING_DOWN_S = 5
RETRY_TOO_MANY_S = 1  # a connection slot frees as soon as another client's request is answered

# RFC 6761 reserves ``localhost`` and every name under it for loopback: nobody can register one,
# so no attacker can rebind it to a page of theirs.
_LOOPBACK_NAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*localhost", re.IGNORECASE)
_PORT = re.compile(r"[0-9]{1,5}")

@dataclass(frozen=True)
class Route:
    method: str
    rpc_method: str | None  # None: served by the shim itself (openapi.json, metrics)
    params_type: type[Any] | None  # None: a control-plane call, answered at once (never queued)
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
    """The bearer token; the file must belong to us and be unreadable by anyone else.

    The checks are made on the opened file (fstat), not on the path before opening it: a file
    swapped in between (in a directory someone else can write) cannot pass them. O_NONBLOCK: a
    FIFO at the path must not hang the start."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise StartupError(f"token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StartupError(f"token file {path} is not a regular file")
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StartupError(f"token file {path} must be owned by this user with mode 0600 or stricter")
        try:
            token = handle.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise StartupError(f"token file {path}: {exc.strerror}") from None
    if len(token) > MAX_TOKEN_FILE_BYTES:
        raise StartupError(f"token file {path} holds more than {MAX_TOKEN_FILE_BYTES} bytes: not a token")
    token = token.strip()
    if len(token) < 16:
        raise StartupError(f"token file {path}: the token must be at least 16 characters")
    return token


# ---------------------------------------------------------------- Host and Origin (DNS rebinding)


def split_authority(authority: str) -> tuple[str, int, bool] | None:
    """``host[:port]`` (RFC 3986, no userinfo) as (host, port, bracketed); the port defaults to 80.

    None when it is not well formed. A bracketed host is an IPv6 literal.
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest, bracketed = authority[1:end], authority[end + 1:], True
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_or_empty = authority.partition(":")
        port_text, bracketed = (port_text_or_empty if sep else None), False
    if port_text is None:
        return host, 80, bracketed
    if not _PORT.fullmatch(port_text):
        return None
    return host, int(port_text), bracketed


def is_loopback_host(host: str, bracketed: bool) -> bool:
    """``localhost``, a name under ``.localhost``, an IPv4 literal in 127.0.0.0/8 or ``[::1]``."""
    if bracketed:
        if "%" in host:  # a zone id: never loopback
            return False
        try:
            return ipaddress.IPv6Address(host) == ipaddress.IPv6Address("::1")
        except ValueError:
            return False
    if _LOOPBACK_NAME.fullmatch(host):
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def loopback_authority(value: bytes, port: int) -> bool:
    """True when ``value`` (a Host header, or an origin's authority) names loopback on ``port``."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return False
    parts = split_authority(text)
    return parts is not None and parts[1] == port and is_loopback_host(parts[0], parts[2])


def loopback_origin(value: bytes, port: int) -> bool:
    """An ``Origin`` the shim accepts: ``http://`` + a loopback authority on ``port``.

    ``null`` (sandboxed iframes, file: pages, some redirects) is refused: it names no place that
    can be trusted, and any page can make itself ``null`` by sandboxing itself.
    """
    scheme = b"http://"
    if value[: len(scheme)].lower() != scheme:
        return False
    return loopback_authority(value[len(scheme):], port)


def authority(address: tuple[Any, ...]) -> str:
    """``host:port`` for a bound socket address (IPv6 in brackets)."""
    host, port = str(address[0]), int(address[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def base_url(address: tuple[Any, ...]) -> str:
    """``http://host:port`` for a bound socket address (IPv6 in brackets)."""
    return f"http://{authority(address)}"


# ---------------------------------------------------------------- replies


def _error_body(error: ErrorObject) -> bytes:
    return ENCODER.encode(HttpErrorBody(error=error))


def _retry_after(error: ErrorObject) -> int | None:
    if error.code == QueueFull.code:
        millis = QueueFull(error.message, error.data).retry_after_ms
        return max(1, math.ceil((millis or 1000) / 1000))
    if error.code == NotReady.code:
        # A load retry is scheduled: come back when it starts (CONTRACT.md §4, health).
        retry_in = NotReady(error.message, error.data).retry_in_s
        return max(1, math.ceil(retry_in)) if retry_in is not None else RETRY_NOT_READY_S
    if error.code == DeviceBusy.code:
        return RETRY_DEVICE_BUSY_S
    if error.code == ShuttingDown.code:
        return RETRY_SHUTTING_DOWN_S
    if error.code == TooManyRequests.code:
        return RETRY_TOO_MANY_S
    return None


def error_reply(error: ErrorObject, status: int | None = None) -> HttpReply:
    headers = [(b"content-type", b"application/json")]
    retry = _retry_after(error)
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    return HttpReply(status or STATUS_BY_CODE.get(error.code, 500), _error_body(error), headers)


def plain_error(status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None,
                data: Any = msgspec.UNSET) -> HttpReply:
    """An HTTP-level error (400, 401, 403, 404, 405, 408, 413, 415, 421, 431, 501) in the same body shape."""
    body = _error_body(ErrorObject(code=InvalidRequest.code, message=message, data=data))
    return HttpReply(status, body, [(b"content-type", b"application/json"), *(extra_headers or [])])


@dataclass
class Outcome:
    """What one exchange produced: the reply, and whether the connection can carry another request."""

    reply: HttpReply
    keep_alive: bool = True
    #: The request was not read to its end (an early refusal): discard the rest before closing.
    linger: bool = False


class Expired(Exception):
    """A deadline passed while waiting for the client."""


# ---------------------------------------------------------------- connections


@dataclass(eq=False)
class HttpConnection:
    """One accepted TCP connection: its streams, its h11 state and its one outstanding read.

    At most one ``reader.read`` is in flight, kept across waits: the head, the body, and the
    watch for a hang-up while a job runs all take their bytes from it, so a wait that ends (a
    deadline, a reply that is ready) never loses bytes that were already read.
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=lambda: h11.Connection(
        h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES))
    task: asyncio.Task[Any] | None = None
    #: Waiting for the first byte of a request with nothing buffered: safe to close at shutdown.
    idle: bool = False
    #: Bytes in h11's buffer since the current head began (to measure a head that came whole).
    head_bytes: int = 0
    #: The request being answered is a HEAD: its reply has a head and no body (RFC 9110 §9.3.2).
    head_only: bool = False
    _read: asyncio.Task[bytes] | None = None

    def pending_read(self) -> asyncio.Task[bytes]:
        if self._read is None:
            self._read = asyncio.ensure_future(self.reader.read(READ_CHUNK))
        return self._read

    def take_read(self) -> bytes:
        """The finished read's bytes; b"" when the client is gone (EOF, reset)."""
        read, self._read = self._read, None
        if read is None:
            return b""
        try:
            return read.result()
        except (ConnectionError, OSError):
            return b""

    async def receive(self, timeout: float) -> bytes:
        """The next bytes from the client, or Expired after ``timeout`` seconds."""
        read = self.pending_read()
        if not read.done() and timeout > 0:
            await asyncio.wait({read}, timeout=timeout)
        if not read.done():
            raise Expired()
        return self.take_read()

    def feed(self, data: bytes) -> None:
        self.http.receive_data(data)
        self.head_bytes += len(data)

    def buffered(self) -> int:
        return len(self.http.trailing_data[0])

    def hung_up(self) -> bool:
        """True once the client closed its side (FIN: POLLRDHUP) or the connection broke, also
        while we do not read it: the kernel reports the FIN behind any bytes still unread."""
        if self.writer.transport.is_closing():
            return True
        sock = self.writer.get_extra_info("socket")
        if sock is None or sock.fileno() < 0:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLRDHUP)
        gone = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL
        return any(mask & gone for _, mask in poller.poll(0))

    def close(self) -> None:
        if self._read is not None:
            self._read.cancel()
            self._read = None
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection with a reset. A plain close would leave the kernel holding the
        unsent replies (up to its send buffer) for a client that does not read them, with our
        FIN queued behind them; SO_LINGER 0 discards them and resets at once."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.writer.transport.abort()


class Refusal(Exception):
    """A request refused before dispatch; the connection closes after ``reply``."""

    def __init__(self, reply: HttpReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class HttpShim:
    """Serves the listening socket's connections (``handle_connection``) and drains them at
    shutdown; one instance per daemon, in the daemon's event loop."""

    def __init__(self, dispatcher: Dispatcher, config: Config, token: bytes | None,
                 address: tuple[Any, ...]) -> None:
        """``address`` is the listening socket's own (``getsockname()``): under socket activation
        it is systemd's, whatever ``--host``/``--port`` say, and Host headers must name it."""
        self._dispatcher = dispatcher
        self._max_body = config.max_line_bytes
        self._emulated = config.npu_emulation
        self._max_connections = config.max_connections
        # The socket's partial-line deadline bounds each request head, each body and each reply
        # write: the same "a started message must move" rule on both transports.
        self._timeout = config.line_timeout_s
        self._write_buffer = config.write_buffer_bytes
        self._token = token
        self._port = int(address[1])
        # What curl, http.client and browsers send for the usual URLs: accepted without parsing.
        self._usual_hosts = frozenset(f"{host}:{self._port}".encode() for host in ("127.0.0.1", "localhost", "[::1]"))
        self._openapi = ENCODER.encode(openapi_document(base_url(address)))
        self._served: set[HttpConnection] = set()
        self._refusing: set[HttpConnection] = set()
        self._stopping = False
        self._warned: set[str] = set()

    @property
    def active_connections(self) -> int:
        """Every accepted connection, the ones being refused included."""
        return len(self._served) + len(self._refusing)

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = HttpConnection(reader, writer, task=asyncio.current_task())
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies are complete messages
        # A client that does not read makes drain() wait once this much is buffered (write deadline).
        writer.transport.set_write_buffer_limits(high=self._write_buffer)
        try:
            if len(self._served) >= self._max_connections:
                await self._refuse_connection(conn)
            else:
                self._served.add(conn)
                await self._serve(conn)
        finally:
            self._served.discard(conn)
            self._refusing.discard(conn)
            conn.close()

    async def shutdown(self, deadline: float) -> None:
        """Stop serving HTTP (the listener is already closed): close idle keep-alive connections
        quietly, let requests in flight be answered until ``deadline`` (``time.monotonic()``)
        and close each connection after its reply; then abort what is left."""
        self._stopping = True
        for conn in self._connections():
            if conn.idle:
                conn.writer.close()  # the pending read sees EOF: the handler ends quietly
        tasks = {conn.task for conn in self._connections() if conn.task is not None}
        if tasks:
            # At least a moment: replies of jobs that finished right at the deadline are ready.
            await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
        left = self._connections()
        if left:
            log.warning("closing %d HTTP connection(s) still busy at the shutdown deadline", len(left))
            for conn in left:
                conn.abort()
            await asyncio.wait({conn.task for conn in left if conn.task is not None}, timeout=ABORT_GRACE_S)

    def _connections(self) -> list[HttpConnection]:
        return [*self._served, *self._refusing]

    # ------------------------------------------------------------ one connection

    async def _refuse_connection(self, conn: HttpConnection) -> None:
        """Over --max-connections: read the head only (bounded), answer 503 -32009, close.
        The request never reaches the dispatcher."""
        served = len(self._served)
        if len(self._refusing) >= MAX_REFUSING:
            self._note("http_connections", f"over {self._max_connections} connections: reset")
            conn.abort()
            return
        self._refusing.add(conn)
        self._note("http_connections", f"over {self._max_connections} connections: refused with 503")
        error = TooManyRequests(
            f"too many connections ({self._max_connections})",
            LimitData(limit=self._max_connections, actual=served + 1, unit="connections", field="connections"))
        try:
            request = await self._read_head(conn, idle_timeout=self._timeout)
            if request is None:
                return
            # Host/Origin first: a DNS-rebinding page must get 421/403 here too, not the limit
            # and the live connection count in a 503's data.
            self._check_head(request)
        except Refusal as refusal:
            if await self._send(conn, refusal.reply, close=True):
                await self._linger(conn)
            return
        except h11.RemoteProtocolError:
            return
        if await self._send(conn, error_reply(error.to_object()), close=True):
            await self._linger(conn)

    async def _serve(self, conn: HttpConnection) -> None:
        while True:
            outcome = await self._exchange(conn)
            if outcome is None:
                return
            keep_alive = outcome.keep_alive and not self._stopping
            if not await self._send(conn, outcome.reply, close=not keep_alive):
                return
            if not keep_alive or conn.http.our_state is h11.MUST_CLOSE:
                if outcome.linger:
                    await self._linger(conn)
                return
            conn.http.start_next_cycle()

    async def _exchange(self, conn: HttpConnection) -> Outcome | None:
        """Read one request and produce its reply; None when the client is gone (or idle too long)."""
        try:
            request = await self._read_head(conn, idle_timeout=KEEPALIVE_IDLE_S)
            if request is None:
                return None
            self._check_head(request)
            if conn.http.client_is_waiting_for_100_continue:
                # Checks passed: tell the client to send the body now (curl would wait a second).
                conn.writer.write(conn.http.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            body = await self._read_body(conn)
        except Refusal as refusal:
            return Outcome(refusal.reply, keep_alive=False, linger=True)
        except h11.RemoteProtocolError as exc:
            if conn.http.their_state is h11.ERROR and conn.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                if exc.error_status_hint == 431:  # h11's own check: the head is still incomplete
                    return Outcome(self._head_too_large(conn.head_bytes), keep_alive=False, linger=True)
                if exc.error_status_hint == 501:  # RFC 9112 §6.1: a transfer coding it does not know
                    return Outcome(plain_error(501, "unsupported Transfer-Encoding: only chunked is understood"),
                                   keep_alive=False, linger=True)
                return Outcome(plain_error(400, "malformed HTTP request"), keep_alive=False, linger=True)
            return None
        if body is None:
            return None
        reply = await self._respond(conn, request, body)
        return None if reply is None else Outcome(reply)

    async def _read_head(self, conn: HttpConnection, idle_timeout: float) -> h11.Request | None:
        """The next request head. Before its first byte the connection is idle (``idle_timeout``,
        then a quiet close: None); from its first byte the whole head has ``--line-timeout``."""
        loop = asyncio.get_running_loop()
        conn.head_bytes = conn.buffered()  # pipelined bytes already count towards this head
        started = conn.head_bytes > 0
        deadline = loop.time() + (self._timeout if started else idle_timeout)
        conn.idle = not started
        try:
            while True:
                event = conn.http.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await conn.receive(deadline - loop.time())
                    except Expired:
                        if not started:
                            return None
                        raise Refusal(self._slow("request head")) from None
                    if data and not started:
                        started, conn.idle = True, False
                        deadline = loop.time() + self._timeout
                    conn.feed(data)
                    continue
                if isinstance(event, h11.Request):
                    conn.head_only = event.method == b"HEAD"
                    self._check_head_size(conn)
                    return event
                return None  # ConnectionClosed: the client is gone
        finally:
            conn.idle = False

    def _check_head_size(self, conn: HttpConnection) -> None:
        """h11 measures a head only while it is incomplete; one that arrived whole (or pipelined
        behind the previous request) is measured here, by what h11 consumed to parse it."""
        if conn.head_bytes <= MAX_HEAD_BYTES:
            return
        size = conn.head_bytes - conn.buffered()
        if size > MAX_HEAD_BYTES:
            raise Refusal(self._head_too_large(size))

    def _head_too_large(self, size: int) -> HttpReply:
        self._note("http_head_too_large", f"request head over {MAX_HEAD_BYTES} bytes: 431")
        return plain_error(431, f"request head larger than {MAX_HEAD_BYTES} bytes",
                           data=LimitData(limit=MAX_HEAD_BYTES, actual=size, unit="bytes", field="head"))

    def _slow(self, what: str) -> HttpReply:
        self._note("http_slow_request", f"{what} not received within {self._timeout:g}s: 408")
        return plain_error(408, f"{what} not received within {self._timeout:g} s")

    def _check_head(self, request: h11.Request) -> None:
        """Refusals that need only the head, before the body is read and before any work.

        Host and Origin stop DNS rebinding: a page whose own name resolves to 127.0.0.1 is
        same-origin with us as far as the browser knows, so CORS does not apply; but its
        requests still carry its name in Host (and Origin), never a loopback one. Browsers send
        no Origin on a cross-site GET (an ``<img>``, a link); ``Sec-Fetch-Site`` still says so.
        """
        hosts: list[bytes] = []
        origins: list[bytes] = []
        fetch_sites: list[bytes] = []
        declared: int | None = None
        for name, value in request.headers:  # one pass: this runs for every request
            if name == b"host":
                hosts.append(value)
            elif name == b"origin":
                origins.append(value)
            elif name == b"sec-fetch-site":
                fetch_sites.append(value)
            elif name == b"content-length":
                declared = int(value)  # h11 has validated it
        if len(hosts) != 1:
            self._note("http_host", "request without exactly one Host header: 400")
            raise Refusal(plain_error(400, "a request needs exactly one Host header"))
        if hosts[0] not in self._usual_hosts and not loopback_authority(hosts[0], self._port):
            self._note("http_host", "Host is not a loopback name on this port (DNS rebinding?): 421")
            raise Refusal(plain_error(
                421, f"Host must be localhost, 127.0.0.1 or [::1] with port {self._port}"))
        if origins and (len(origins) > 1 or not loopback_origin(origins[0], self._port)):
            self._note("http_origin", "Origin is not a loopback origin on this port: 403")
            raise Refusal(plain_error(
                403, f"cross-origin request refused: the Origin must be http://localhost:{self._port} "
                     f"(or 127.0.0.1, [::1]) when present"))
        # Repeated, like Origin: refused, never resolved by picking one of the values.
        if fetch_sites and (len(fetch_sites) > 1 or fetch_sites[0].lower() not in (b"same-origin", b"none")):
            self._note("http_origin", "Sec-Fetch-Site says another site sent this request: 403")
            raise Refusal(plain_error(403, "cross-site request refused (Sec-Fetch-Site)"))
        if declared is not None and declared > self._max_body:
            raise Refusal(plain_error(413, f"body larger than {self._max_body} bytes"))

    async def _read_body(self, conn: HttpConnection) -> bytes | None:
        """The whole body within ``--line-timeout`` (408 after), at most ``--max-line-bytes``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        body = bytearray()
        while True:
            event = conn.http.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.feed(await conn.receive(deadline - loop.time()))
                except Expired:
                    raise Refusal(self._slow("request body")) from None
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise Refusal(plain_error(413, f"body larger than {self._max_body} bytes"))
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                return None

    # ------------------------------------------------------------ requests

    async def _respond(self, conn: HttpConnection, request: h11.Request, body: bytes) -> HttpReply | None:
        prepared = self.prepare(request, body)
        if isinstance(prepared, HttpReply):
            return prepared
        route, rpc = prepared
        if route.params_type is None:  # health, models: answered at once, nothing to watch
            reply: Reply | None = self._dispatcher.call_now(rpc, None, transport="http")
        else:
            reply = await self._call_watching(conn, rpc)
        if reply is None:
            return None
        if isinstance(reply, ErrorResponse):
            return error_reply(reply.error)
        return HttpReply(200, ENCODER.encode(reply.result), [(b"content-type", b"application/json")])

    def prepare(self, request: h11.Request, body: bytes) -> HttpReply | tuple[Route, Request]:
        """The reply for what the shim answers itself, or the JSON-RPC request to dispatch."""
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
        return route, Request(jsonrpc="2.0", method=route.rpc_method, params=params, id=None)

    async def _call_watching(self, conn: HttpConnection, rpc: Request) -> Reply | None:
        """Dispatch a job while watching the connection: a client that hangs up (EOF or reset)
        gives up its job, which the worker then withdraws or stops at its next token. Bytes of a
        pipelined next request are kept in h11's buffer for the next exchange. None: cancelled."""
        call = asyncio.ensure_future(self._dispatcher.call(rpc, None, transport="http"))
        watched = 0
        while not call.done():
            if watched > self._max_body + MAX_HEAD_BYTES:
                # The client keeps pipelining: stop reading (bounded buffering), but keep watching
                # for its hang-up, which the kernel reports behind the unread bytes.
                if await self._hung_up_while(conn, call):
                    await self._cancel_call(call, rpc)
                    return None
                break
            read = conn.pending_read()
            await asyncio.wait({call, read}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                continue
            data = conn.take_read()
            conn.feed(data)  # b"" tells h11 the client is gone
            watched += len(data)
            if data or call.done():
                continue
            await self._cancel_call(call, rpc)
            return None
        return call.result()

    @staticmethod
    async def _hung_up_while(conn: HttpConnection, call: asyncio.Future[Reply]) -> bool:
        """Wait for ``call`` without reading; True if the client hung up first."""
        while not call.done():
            await asyncio.wait({call}, timeout=HANGUP_POLL_S)
            if not call.done() and conn.hung_up():
                return True
        return False

    async def _cancel_call(self, call: asyncio.Future[Reply], rpc: Request) -> None:
        call.cancel()
        await asyncio.wait({call}, timeout=self._timeout)
        log.debug("HTTP client hung up while its %s request ran: cancelled", rpc.method)

    def _metrics_text(self) -> str:
        snap = self._dispatcher.worker.snapshot()
        jobs = {"served": snap.jobs_served, "failed": snap.jobs_failed, "cancelled": snap.jobs_cancelled}
        return self._dispatcher.metrics.exposition(snap.queue_depth, self._dispatcher.worker.capacity, snap.running,
                                                   snap.load_time_ms, snap.status, jobs, self._emulated)

    def _authorized(self, request: h11.Request) -> bool:
        """Exactly one ``Authorization: Bearer <token>`` with the token. The scheme name is
        case-insensitive (RFC 9110 §11.1: ``bearer`` and ``BEARER`` too)."""
        values = [value for name, value in request.headers if name == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token or b"")

    def _note(self, reason: str, message: str) -> None:
        """Count a refusal; log the first of each kind as a warning, the rest at DEBUG (a page
        can send thousands). Messages never quote what the client sent."""
        self._dispatcher.metrics.record_rejection(reason)
        if reason in self._warned:
            log.debug("HTTP: %s", message)
            return
        self._warned.add(reason)
        log.warning("HTTP: %s (further ones are counted in npud_rejections_total{reason=\"%s\"})", message, reason)

    # ------------------------------------------------------------ writing

    async def _send(self, conn: HttpConnection, reply: HttpReply, close: bool = False) -> bool:
        """Write one reply; False when the connection is gone or was dropped for not reading."""
        headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode()),
                   (b"server", f"npud/{__version__}".encode()), (b"cache-control", b"no-store")]
        if close:
            headers.append((b"connection", b"close"))
        reason = HTTPStatus(reply.status).phrase.encode()
        try:
            # One write: head and body in separate segments would meet the client's delayed ACK
            # (Nagle), a 40 ms stall per request (measured by the benchmark before this was joined).
            parts = [conn.http.send(h11.Response(status_code=reply.status, headers=headers, reason=reason)) or b""]
            if not conn.head_only:  # a reply to HEAD has no body: h11 refuses to send one
                parts.append(conn.http.send(h11.Data(data=reply.body)) or b"")
            parts.append(conn.http.send(h11.EndOfMessage()) or b"")
            data = b"".join(parts)
        except h11.LocalProtocolError:
            return False
        conn.writer.write(data)
        if conn.writer.transport.get_write_buffer_size() <= self._write_buffer:
            return True  # the usual case: no wait, and no task for wait_for (a loop turn per request)
        try:
            await asyncio.wait_for(conn.writer.drain(), self._timeout)
        except asyncio.TimeoutError:
            self._note("http_unread_replies",
                       f"client left over {self._write_buffer} reply bytes unread for {self._timeout:g}s: dropped")
            conn.abort()
            return False
        except (ConnectionError, OSError):
            return False
        return True

    async def _linger(self, conn: HttpConnection) -> None:
        """After an early reply (413, 421, 431, 408, 400) the client may still be sending its body.
        Closing with unread data makes TCP reset the connection, and the client may lose our
        reply; so half-close, then read and discard for a bounded time before closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        try:
            if conn.writer.can_write_eof():
                conn.writer.write_eof()
        except OSError:
            return
        discarded = 0
        while discarded < LINGER_MAX_BYTES:
            try:
                chunk = await conn.receive(deadline - loop.time())
            except Expired:
                return
            if not chunk:
                return
            discarded += len(chunk)


def _is_json(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


# ---------------------------------------------------------------- OpenAPI


def openapi_document(server_url: str) -> dict[str, Any]:
    """OpenAPI 3.1, generated from the msgspec wire types (never written by hand).

    ``server_url`` is where this shim listens (the bound address, not the configured default)."""
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
            "400": {"description": "Malformed HTTP, or no Host header", "content": error_content},
            "401": {"description": "Missing or wrong bearer token", "content": error_content},
            "403": {"description": "A request from another site (Origin, Sec-Fetch-Site)", "content": error_content},
            "408": {"description": "Request head or body not received within --line-timeout",
                    "content": error_content},
            "421": {"description": "Host is not localhost or a loopback address with this port (DNS rebinding)",
                    "content": error_content},
            "431": {"description": "Request head over 16 KiB", "content": error_content},
            "500": {"description": "Generation failed, NPU execution not verified, or internal error",
                    "content": error_content},
            "503": {"description": "Queue full, model not ready, NPU busy, shutting down or too many "
                                   "connections (with Retry-After)",
                    "content": error_content},
        }
        operation: dict[str, Any] = {"operationId": route.rpc_method, "summary": route.summary,
                                     "responses": responses}
        if route.params_type is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": ref(route.params_type)}}}
            responses["400"] = {"description": "Invalid JSON or params, malformed HTTP, or no Host header",
                                "content": error_content}
            responses["413"] = {"description": "Body too large", "content": error_content}
            responses["415"] = {"description": "Content-Type is not application/json", "content": error_content}
            responses["501"] = {"description": "A Transfer-Encoding other than chunked", "content": error_content}
        paths[path] = {route.method.lower(): operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "npud HTTP shim", "version": __version__,
                 "description": "Loopback-only HTTP access to npud's operations; see CONTRACT.md."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }

