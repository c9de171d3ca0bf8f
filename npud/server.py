"""The Unix socket server: binding, and one protocol object per connection.

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
import socket
import stat
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from npuclient.errors import InvalidRequest, PeerNotAllowed, RpcError, TooManyRequests
from npuclient.framing import LineBuffer, LineTooLong
from npuclient.protocol import LimitData, encode_line

from .config import Config
from .connlog import ConnectionLog
from .engine import StartupError
from .peercred import PeerCred, PeerPolicy, peer_credentials
from .metrics import Metrics
from .rpc import Dispatcher, Immediate, ParsedLine, PendingJobs, parse_line

log = logging.getLogger("npud")

# How often a half-closed connection (the client shut down its sending side, as
# `printf ... | socat` does) is checked for a full close while its replies are pending.
HALF_CLOSE_POLL_S = 0.5
# How long a connection we end (rejected peer, oversize line) is drained after our last line
# before it is closed: closing a Unix socket with unread data resets it, and the peer's read then
# fails with ECONNRESET instead of returning our error line and a clean end of file.
LINGER_S = 2.0
# Rejected connections lingering at once (their descriptors are not counted as connections);
# beyond this a rejected peer gets its error line and an immediate close.
MAX_LINGERING = 64
LISTEN_BACKLOG = 1024


# ---------------------------------------------------------------- sockets


def is_abstract(name: str) -> bool:
    return name.startswith("@")


def socket_address(name: str) -> str | bytes:
    """``@name`` is Linux's abstract namespace (a leading NUL byte); anything else a path."""
    return b"\0" + name[1:].encode() if is_abstract(name) else name


def _someone_listens(address: str | bytes) -> bool:
    """False only when the kernel says nobody listens there (ECONNREFUSED, or the file is gone).
    Anything else counts as a live daemon: a full accept queue answers EAGAIN at once (a busy
    daemon, or one flooded on purpose), and a socket judged stale is deleted."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(address)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()


@dataclass(frozen=True)
class SocketFile:
    """The filesystem socket this process bound: removed at exit only if it is still that file."""

    path: str
    dev: int
    ino: int

    @classmethod
    def of(cls, path: str) -> SocketFile:
        st = os.lstat(path)
        return cls(path, st.st_dev, st.st_ino)

    def remove(self) -> bool:
        """Unlink the path if it is still our socket; leave anything put there since alone.

        The lstat/unlink window is the one explained in :func:`_remove_stale_socket`: the entry is
        a socket owned by our uid, so whoever could swap it in between could delete the file anyway.
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) or not stat.S_ISSOCK(st.st_mode):
            log.warning("not removing %s at exit: it is no longer the socket npud created", self.path)
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"),
             (stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "file")


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a daemon that died, or raise StartupError and touch nothing.

    Only a *socket* owned by our own uid that nobody listens on is removed: ``--socket notes.txt``
    must never cost the user a file. ``lstat`` never follows a symlink, so a link is refused too.

    Races: bind() is atomic (it fails with EADDRINUSE instead of replacing anything), so the only
    window is between the lstat below and the unlink. Swapping the directory entry in that window
    needs write permission on the directory and, in a sticky directory such as /tmp, ownership of
    the entry (ours) or of the directory. Whoever can do that could delete the swapped-in file
    directly anyway, so the window grants nobody a deletion they did not already have. (Linux has
    no "unlink if still this inode" call that would close it entirely.)
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # gone in the meantime: bind again
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(
            f"--socket {path}: a {_file_kind(st.st_mode)} is already there, not a socket; npud only "
            "ever replaces a stale socket and has left it untouched. Move it away or choose another path."
        )
    if st.st_uid != os.geteuid():
        raise StartupError(
            f"--socket {path}: the socket there belongs to uid {st.st_uid}, not to this user; npud "
            "does not remove other users' files. Remove it as that user or choose another path."
        )
    if _someone_listens(path):
        raise StartupError(f"another daemon is already listening on {path}")
    os.unlink(path)  # a stale socket file from a daemon that died
    log.info("removed the stale socket %s", path)


def _bind_path(sock: socket.socket, path: str) -> None:
    old_umask = os.umask(0o177)  # created 0600: only our uid may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)


def bind_unix_socket(name: str) -> tuple[socket.socket, SocketFile | None]:
    """Bind and listen; refuse if a live daemon already has the name.

    For a path, also returns the :class:`SocketFile` that this process created (to remove at exit).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owned: SocketFile | None = None
    try:
        if is_abstract(name):
            sock.bind(socket_address(name))
        else:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            try:
                _bind_path(sock, name)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                _remove_stale_socket(name)
                _bind_path(sock, name)  # EADDRINUSE again: another daemon won the race
            owned = SocketFile.of(name)
        # Bursts of clients (or a flood of idle ones) must queue, not fail with EAGAIN.
        sock.listen(LISTEN_BACKLOG)
    except StartupError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"another daemon is already listening on {name}") from None
        raise StartupError(f"cannot listen on {name}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock, owned


# ---------------------------------------------------------------- connections


class RpcHost(Protocol):
    """What a connection needs from the daemon that accepted it."""

    config: Config
    policy: PeerPolicy
    dispatcher: Dispatcher
    connections: set[RpcConnection]
    #: Rejected connections draining before their close (bounded by MAX_LINGERING).
    lingering: set[RpcConnection]
    metrics: Metrics
    connection_log: ConnectionLog

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


class RpcConnection(asyncio.Protocol):
    """One client connection: peer check, framing, one task per request line."""

    def __init__(self, daemon: RpcHost) -> None:
        self._daemon = daemon
        self._transport: asyncio.Transport | None = None
        self._buffer = LineBuffer(daemon.config.max_line_bytes)
        self._tasks: set[asyncio.Task[None]] = set()
        self._peer: PeerCred | None = None
        self._half_closed = False
        self._pending: PendingJobs = {}  # request id -> job, for `cancel` from this connection
        self._in_flight = 0  # unanswered requests of the running tasks (a batch counts each one)
        self._last_activity = 0.0
        self._partial_since: float | None = None  # when the current incomplete line began
        self._timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._eof_sent = False  # we half-closed: nothing more may be written

    @property
    def peer(self) -> PeerCred | None:
        return self._peer

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        try:
            peer = peer_credentials(sock)
        except OSError:
            peer = None
        if peer is None or not self._daemon.policy.allows(peer):
            self._reject(peer, "peer_not_allowed", PeerNotAllowed(
                "peer not allowed: ask the daemon's owner to add your uid with --allow-uid",
                {"uid": peer.uid} if peer else {}))
            return
        over = self._connection_limit(peer)
        if over is not None:
            self._reject(peer, str(over.data_field("field")), over)
            return
        self._peer = peer
        self._daemon.connections.add(self)
        # A client that stops reading must not make us buffer its replies without bound.
        self._transport.set_write_buffer_limits(high=self._daemon.config.write_buffer_bytes)
        self._last_activity = self._daemon.loop.time()
        self._arm_timer()
        log.debug("connection pid=%d uid=%d", peer.pid, peer.uid)

    def data_received(self, data: bytes) -> None:
        if self._peer is None:
            return
        now = self._daemon.loop.time()
        self._last_activity = now
        try:
            lines = self._buffer.feed(data)
        except LineTooLong as exc:
            for line in exc.complete_lines:
                self._spawn(line)
            self._refuse_oversize(exc.limit)
            return
        if not self._buffer.pending_bytes:
            self._partial_since = None
        elif lines or self._partial_since is None:
            self._partial_since = now
        self._serve_lines(lines)

    def _take_last_line(self) -> bool:
        """A last line without its newline (`printf '{...}' | socat`, a file saved without a final
        newline) is complete at end of input: nothing can follow it, and its sender is still
        reading. Serve it rather than drop it unanswered. False if it was over the line limit."""
        try:
            lines = self._buffer.feed(b"\n")
        except LineTooLong as exc:
            self._refuse_oversize(exc.limit)
            return False
        self._serve_lines(lines)
        return True

    def pause_writing(self) -> None:
        """The reply buffer passed --write-buffer-limit: the client is not reading. Drop it."""
        self._warn("unread_replies", "disconnecting %s: %d reply bytes unread",
                   self._who(), self._daemon.config.write_buffer_bytes)
        self._cancel_all()
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool:
        if self._peer is None:
            return False  # a rejected or refused peer finished sending: close now
        if self._peer_hung_up():
            self._cancel_all()
            return False
        # Half-close: the client is done sending but still reading. Keep the transport open
        # until the pending replies are written, and watch for a full close meanwhile.
        self._half_closed = True
        self._partial_since = None  # nothing more can arrive: no slow line to time out
        if self._buffer.pending_bytes and not self._take_last_line():
            return True  # oversize: answered and closed by _refuse_oversize
        if self._tasks:
            self._daemon.spawn(self._close_when_idle())
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_all()
        for timer in (self._timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._daemon.connections.discard(self)
        self._daemon.lingering.discard(self)

    # -- limits

    def _connection_limit(self, peer: PeerCred) -> TooManyRequests | None:
        config = self._daemon.config
        total = len(self._daemon.connections)
        if total >= config.max_connections:
            return TooManyRequests(
                f"too many connections ({config.max_connections})",
                LimitData(limit=config.max_connections, actual=total + 1, unit="connections", field="connections"))
        same_uid = sum(1 for conn in self._daemon.connections if conn.peer and conn.peer.uid == peer.uid)
        if same_uid >= config.max_connections_per_uid:
            return TooManyRequests(
                f"too many connections for uid {peer.uid} ({config.max_connections_per_uid})",
                LimitData(limit=config.max_connections_per_uid, actual=same_uid + 1, unit="connections",
                          field="connections_per_uid"))
        return None

    def _arm_timer(self) -> None:
        config = self._daemon.config
        self._timer = self._daemon.loop.call_later(min(config.idle_timeout_s, config.line_timeout_s), self._on_timer)

    def _on_timer(self) -> None:
        """Close slow (slowloris) and idle connections; otherwise check again later."""
        config, now = self._daemon.config, self._daemon.loop.time()
        if self._partial_since is not None and now - self._partial_since >= config.line_timeout_s:
            self._warn("slow_line", "closing connection %s: a line took longer than %.0fs to arrive",
                       self._who(), config.line_timeout_s)
            self._cancel_all()
            self.abort_or_close()
            return
        if not self._tasks and now - self._last_activity >= config.idle_timeout_s:
            log.debug("closing idle connection %s", self._who())
            self.abort_or_close()
            return
        self._arm_timer()

    # -- helpers

    def _who(self, peer: PeerCred | None = None) -> str:
        peer = peer or self._peer
        return f"pid={peer.pid} uid={peer.uid} gid={peer.gid}" if peer else "from an unknown peer"

    def _warn(self, reason: str, message: str, *args: Any, peer: PeerCred | None = None) -> None:
        """Count a connection-level refusal and log it, rate-bounded (a flood is one summary line)."""
        self._daemon.metrics.record_rejection(reason)
        peer = peer or self._peer
        self._daemon.connection_log.warn(reason, peer.uid if peer else None, message, *args)

    def _reject(self, peer: PeerCred | None, reason: str, error: RpcError) -> None:
        """Send a rejected (or over-limit) peer its error line, then end the connection.

        Such connections are not counted in ``connections``, so the ones left draining are
        counted here and capped: a flood of connect() calls cannot pin descriptors.
        """
        self._warn(reason, "rejected connection %s: %s", self._who(peer), error.message, peer=peer)
        self._write(encode_line(error.reply()))
        if len(self._daemon.lingering) >= MAX_LINGERING:
            self.abort_or_close()  # under a flood: the line is sent; a reset may follow it
            return
        self._daemon.lingering.add(self)
        self._linger_close()

    def _refuse_oversize(self, limit: int) -> None:
        """Answer what came before, then the error, then close: the stream cannot be resynchronised."""
        self._warn("line_too_long", "closing connection %s: line longer than %d bytes", self._who(), limit)
        error = InvalidRequest(
            f"message too large: lines are limited to {limit} bytes",
            LimitData(limit=limit, actual=limit + 1, unit="bytes", field="line"),
        )
        self._peer = None  # ignore anything else this client sends
        self._partial_since = None  # the rest is discarded, not a slow line
        if self._transport is not None:
            self._transport.pause_reading()  # until the earlier lines are answered
        self._daemon.spawn(self._close_when_idle(final_line=encode_line(error.reply())))

    def _linger_close(self) -> None:
        """End the connection without a reset: half-close (our last line is already queued), then
        read and discard what the peer still sends until its end of file or LINGER_S, then close.

        ``data_received`` ignores a connection without a peer and ``eof_received`` closes it.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._peer = None
        if not self._eof_sent:
            self._eof_sent = True
            transport.write_eof()
        transport.resume_reading()
        self._linger_timer = self._daemon.loop.call_later(LINGER_S, self.abort_or_close)

    def _serve_lines(self, lines: list[bytes]) -> None:
        """Serve lines in order. A job line's task registers its request id (for ``cancel``) in
        its first step, so the lines after it wait until that step has run: a ``cancel`` sent
        right behind its request, in the same read, must find it (it used to answer false and
        leave the job running)."""
        for index, line in enumerate(lines):
            if self._peer is None or self._transport is None or self._transport.is_closing():
                return  # refused, closed or hung up meanwhile: nothing more is served
            if self._spawn(line) and index + 1 < len(lines):
                self._daemon.loop.call_soon(self._serve_lines, lines[index + 1:])  # after the task's step
                return

    def _spawn(self, line: bytes) -> bool:
        """Serve one line; True if it started a task (a job, a batch)."""
        if not line.strip():
            return False  # blank lines (a stray Enter in socat) are not messages
        dispatcher = self._daemon.dispatcher
        parsed = parse_line(line)
        # --max-in-flight counts requests, not lines: a batch is as many requests as it holds.
        cost = dispatcher.waiting_requests(parsed)
        if cost and self._in_flight + cost > self._daemon.config.max_in_flight:
            refusal = dispatcher.refuse_parsed(parsed, self._in_flight_error(cost), self._peer)
            if refusal is not None:
                self._write(refusal)
            return False
        now = dispatcher.handle_parsed_now(parsed, self._peer, self._pending)
        if isinstance(now, Immediate):  # control plane: answered in this very callback
            if now.data is not None:
                self._write(now.data)
            return False
        task = self._daemon.loop.create_task(self._serve_parsed(now))
        self._tasks.add(task)
        self._in_flight += cost
        task.add_done_callback(lambda done: self._task_done(done, cost))
        return True

    def _task_done(self, task: asyncio.Task[None], cost: int) -> None:
        self._tasks.discard(task)
        self._in_flight -= cost

    def _in_flight_error(self, cost: int) -> TooManyRequests:
        limit = self._daemon.config.max_in_flight
        data = LimitData(limit=limit, actual=self._in_flight + cost, unit="requests", field="in_flight")
        if cost > limit:  # could never fit, even on an idle connection: say so, not "wait"
            return TooManyRequests(f"a batch of {cost} requests exceeds this connection's limit of {limit} "
                                   "unanswered requests; send smaller batches", data)
        return TooManyRequests(f"too many requests in flight on this connection ({limit}); wait for replies", data)

    async def _serve_parsed(self, parsed: ParsedLine) -> None:
        reply = await self._daemon.dispatcher.handle_parsed(parsed, self._peer, self._pending)
        if reply is not None:
            self._write(reply)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing() and not self._eof_sent:
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
        """Wait for the pending replies (or a full hang-up), then send ``final_line`` and end."""
        while self._tasks:
            await asyncio.wait(set(self._tasks), timeout=HALF_CLOSE_POLL_S)
            if self._tasks and self._peer_hung_up():
                self._cancel_all()
                break
        if final_line is None:
            self.close()  # the client half-closed: it has nothing more to send, a close is clean
            return
        self._write(final_line)
        self._linger_close()  # the client may still be sending: drain, or the close resets

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def drain(self) -> None:
        """Wait for this connection's in-flight requests (used at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def close(self) -> None:
        """Close once the buffered replies are written (at shutdown, after a half-close)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def abort_or_close(self) -> None:
        """Close now; abort if replies are still buffered, because the client is not reading
        them: a plain close would wait for them forever and keep the connection counted."""
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
