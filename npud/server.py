"""The Unix socket server and the daemon's lifecycle: startup, serve, graceful shutdown.

This module only moves bytes: each connection frames lines (:class:`LineBuffer`) and hands them
to the shared :class:`Dispatcher`. Every connection's ``SO_PEERCRED`` is checked before any byte
is read, because an abstract socket has no file permissions to do it for us.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from pathlib import Path

from npuclient.errors import InvalidRequest, PeerNotAllowed
from npuclient.framing import LineBuffer, LineTooLong
from npuclient.protocol import LimitData, encode_line

from .busy import BusyCounter, BusyCounterError, discover_busy_file
from .config import Config
from .engine import EngineLoader, StartupError
from .http import HttpShim, bind_http_socket, read_token_file
from .npulock import NpuLock
from .peercred import PeerCred, PeerPolicy, peer_credentials
from .rpc import Dispatcher
from .worker import Worker

log = logging.getLogger("npud")

# How often a half-closed connection (the client shut down its sending side, as
# `printf ... | socat` does) is checked for a full close while its replies are pending.
HALF_CLOSE_POLL_S = 0.5
# How long a rejected peer's connection is drained before it is closed.
REJECT_LINGER_S = 1.0


# ---------------------------------------------------------------- sockets


def is_abstract(name: str) -> bool:
    return name.startswith("@")


def socket_address(name: str) -> str | bytes:
    """``@name`` is Linux's abstract namespace (a leading NUL byte); anything else a path."""
    return b"\0" + name[1:].encode() if is_abstract(name) else name


def _someone_listens(address: str | bytes) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(address)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def bind_unix_socket(name: str) -> socket.socket:
    """Bind and listen; refuse if a live daemon already has the name."""
    address = socket_address(name)
    if not is_abstract(name) and os.path.exists(name):
        if _someone_listens(address):
            raise StartupError(f"another daemon is already listening on {name}")
        os.unlink(name)  # a stale socket file from a daemon that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if is_abstract(name):
            sock.bind(address)
        else:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            old_umask = os.umask(0o177)  # created 0600: only our uid may connect
            try:
                sock.bind(address)
            finally:
                os.umask(old_umask)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"another daemon is already listening on {name}") from None
        raise StartupError(f"cannot listen on {name}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- connections


class RpcConnection(asyncio.Protocol):
    """One client connection: peer check, framing, one task per request line."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._transport: asyncio.Transport | None = None
        self._buffer = LineBuffer(daemon.config.max_line_bytes)
        self._tasks: set[asyncio.Task[None]] = set()
        self._peer: PeerCred | None = None
        self._half_closed = False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        try:
            peer = peer_credentials(sock)
        except OSError:
            peer = None
        if peer is None or not self._daemon.policy.allows(peer):
            self._reject(peer)
            return
        self._peer = peer
        self._daemon.connections.add(self)
        log.debug("connection pid=%d uid=%d", peer.pid, peer.uid)

    def data_received(self, data: bytes) -> None:
        if self._peer is None:
            return
        try:
            lines = self._buffer.feed(data)
        except LineTooLong as exc:
            for line in exc.complete_lines:
                self._spawn(line)
            self._refuse_oversize(exc.limit)
            return
        for line in lines:
            self._spawn(line)

    def eof_received(self) -> bool:
        if self._peer is None:
            return False  # a rejected peer finished sending: close now
        if self._buffer.pending_bytes:
            log.debug("client closed with an incomplete line of %d bytes", self._buffer.pending_bytes)
        if self._peer_hung_up():
            self._cancel_all()
            return False
        # Half-close: the client is done sending but still reading. Keep the transport open
        # until the pending replies are written, and watch for a full close meanwhile.
        self._half_closed = True
        if self._tasks:
            self._daemon.spawn(self._close_when_idle())
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_all()
        self._daemon.connections.discard(self)

    # -- helpers

    def _reject(self, peer: PeerCred | None) -> None:
        who = f"pid={peer.pid} uid={peer.uid} gid={peer.gid}" if peer else "unknown peer"
        log.warning("rejected connection from %s: not allowed", who)
        error = PeerNotAllowed(
            "peer not allowed: ask the daemon's owner to add your uid with --allow-uid",
            {"uid": peer.uid} if peer else {},
        )
        self._write(encode_line(error.reply()))
        if self._transport is not None:
            # Half-close and drain rather than close: closing a Unix socket with unread data
            # makes the peer's next read fail with ECONNRESET before it sees our error line.
            self._transport.write_eof()
            self._daemon.loop.call_later(REJECT_LINGER_S, self._transport.close)

    def _refuse_oversize(self, limit: int) -> None:
        """Answer what came before, then the error, then close: the stream cannot be resynchronised."""
        log.warning("closing connection pid=%s: line longer than %d bytes",
                    self._peer.pid if self._peer else "-", limit)
        error = InvalidRequest(
            f"message too large: lines are limited to {limit} bytes",
            LimitData(limit=limit, actual=limit + 1, unit="bytes", field="line"),
        )
        self._peer = None  # ignore anything else this client sends
        if self._transport is not None:
            self._transport.pause_reading()
        self._daemon.spawn(self._close_when_idle(final_line=encode_line(error.reply())))

    def _spawn(self, line: bytes) -> None:
        if not line.strip():
            return  # blank lines (a stray Enter in socat) are not messages
        task = self._daemon.loop.create_task(self._serve_line(line))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_line(self, line: bytes) -> None:
        reply = await self._daemon.dispatcher.handle_line(line, self._peer)
        if reply is not None:
            self._write(reply)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _peer_hung_up(self) -> bool:
        """True if the peer closed both directions (POLLHUP), not just its sending side."""
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        events = poller.poll(0)
        return any(mask & (select.POLLHUP | select.POLLERR) for _, mask in events)

    async def _close_when_idle(self, final_line: bytes | None = None) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks), timeout=HALF_CLOSE_POLL_S)
            if self._tasks and self._peer_hung_up():
                self._cancel_all()
                break
        if final_line is not None:
            self._write(final_line)
        if self._transport is not None:
            self._transport.close()

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def drain(self) -> None:
        """Wait for this connection's in-flight requests (used at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


# ---------------------------------------------------------------- the daemon


def prepare_busy_counter(config: Config) -> BusyCounter | None:
    """On the NPU the busy counter is required (unless disabled); elsewhere it is not used."""
    if not config.is_npu or not config.busy_check:
        return None
    path = Path(config.busy_file) if config.busy_file else discover_busy_file(config.sysfs_root)
    if path is None:
        raise StartupError(
            f"NPU busy counter npu_busy_time_us not found under {config.sysfs_root}/class/accel "
            "(it needs the intel_vpu driver of Linux 6.11 or later); without it npud cannot prove "
            "that jobs ran on the NPU. Pass --no-busy-check to run anyway."
        )
    counter = BusyCounter(path)
    try:
        counter.read()
    except BusyCounterError as exc:
        raise StartupError(f"NPU busy counter unusable: {exc}") from None
    return counter


@dataclass
class Listeners:
    """The sockets a daemon serves, bound before it starts (or handed over by systemd)."""

    rpc: socket.socket
    http: socket.socket | None = None
    http_token: bytes | None = None

    @property
    def http_port(self) -> int | None:
        return self.http.getsockname()[1] if self.http is not None else None

    def close(self) -> None:
        self.rpc.close()
        if self.http is not None:
            self.http.close()


def open_listeners(config: Config) -> Listeners:
    """Bind the Unix socket and, unless disabled, the loopback HTTP shim.

    The Unix socket comes first: "another daemon is already listening" is the useful message when
    a second npud starts, not the HTTP port clash that follows from it.
    """
    token = read_token_file(config.token_file) if config.http and config.token_file else None
    rpc_sock = bind_unix_socket(config.socket)
    try:
        http_sock = bind_http_socket(config.host, config.port) if config.http else None
    except StartupError:
        rpc_sock.close()
        raise
    return Listeners(rpc_sock, http_sock, token)


class Daemon:
    """Owns the worker, the dispatcher and the listening sockets for one run."""

    def __init__(self, config: Config, loader: EngineLoader, listeners: Listeners,
                 busy_counter: BusyCounter | None) -> None:
        self.config = config
        self.policy = PeerPolicy.for_this_process(config.allow_uids, config.allow_gids)
        npu_lock = NpuLock(config.lock_file, config.lock_timeout_s) if config.is_npu else None
        self.worker = Worker(config, loader, busy_counter, npu_lock)
        self.dispatcher = Dispatcher(config, self.worker, str(busy_counter.path) if busy_counter else None)
        self.connections: set[RpcConnection] = set()
        self.listeners = listeners
        self.http_shim = (HttpShim(self.dispatcher, config.max_line_bytes, listeners.http_token)
                          if listeners.http is not None else None)
        self._background: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("daemon is not running")
        return self._loop

    def spawn(self, coro: object) -> None:
        task = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request_stop(self) -> None:
        """Ask :meth:`serve` to shut down (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def serve(self, on_ready: Callable[[], None] | None = None, handle_signals: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        servers = [await self._loop.create_unix_server(lambda: RpcConnection(self), sock=self.listeners.rpc)]
        if self.http_shim is not None and self.listeners.http is not None:
            servers.append(await asyncio.start_server(self.http_shim.handle_connection, sock=self.listeners.http))
        # Listening first, loading second: health answers "loading" while the model compiles.
        self.worker.start()
        http = f", http 127.0.0.1:{self.listeners.http_port}" if self.listeners.http else ""
        log.info("npud %s listening on %s%s (device %s, model %s)",
                 _version(), self.config.socket, http, self.config.device, self.config.model)
        restore = self._install_signal_handlers() if handle_signals else None
        try:
            if on_ready is not None:
                on_ready()
            await self._stop.wait()
            log.info("shutting down")
            await self._shutdown(servers)
        finally:
            if restore is not None:
                restore()
            if not is_abstract(self.config.socket):
                _unlink_quietly(self.config.socket)

    async def _shutdown(self, servers: list[asyncio.AbstractServer]) -> None:
        for server in servers:
            server.close()  # stop accepting; existing connections stay to receive their replies
        self.worker.stop()  # queued jobs fail with ShuttingDown at once
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        finished = await asyncio.to_thread(self.worker.join, self.config.shutdown_timeout_s)
        if not finished:
            log.warning("running job did not finish within %.1fs; exiting anyway", self.config.shutdown_timeout_s)
        pending = [conn.drain() for conn in list(self.connections)]
        if pending:
            await asyncio.wait([asyncio.ensure_future(p) for p in pending],
                               timeout=max(0.1, deadline - time.monotonic()))
        for conn in list(self.connections):
            conn.close()
        if self.http_shim is not None:
            self.http_shim.close_connections()
        for task in list(self._background):
            task.cancel()

    def _install_signal_handlers(self) -> Callable[[], None]:
        loop = self.loop
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.getsignal(sig) for sig in signals}
        received = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal received
            received += 1
            if received > 1:
                log.warning("second %s: exiting at once", sig.name)
                os._exit(1)
            log.info("received %s", sig.name)
            if self._stop is not None:
                self._stop.set()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)

        def restore() -> None:
            for sig in signals:
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous[sig])

        return restore


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _version() -> str:
    from . import __version__

    return __version__


def run(config: Config, loader: EngineLoader) -> int:
    """Start, serve until SIGTERM/SIGINT, shut down. Returns the process exit code."""
    try:
        loader.preflight(config)
        busy_counter = prepare_busy_counter(config)
        listeners = open_listeners(config)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    daemon = Daemon(config, loader, listeners, busy_counter)
    asyncio.run(daemon.serve(handle_signals=True))
    if not daemon.worker.join(0):
        # A generation is stuck inside OpenVINO; interpreter teardown would wait on it forever.
        logging.shutdown()
        os._exit(0)
    return 0
